//! CronJob schedules: the standard five fields (minute, hour, day of month, month, day of
//! week) with names and the `@hourly`-style shorthands, parsed by the `croner` crate in its
//! POSIX/Vixie mode (a day matches when either day field does). The API validates with it;
//! the CronJob controller computes run times with it.

use croner::parser::{CronParser, Seconds, Year};

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule(croner::Cron);

impl Schedule {
    /// Parses a schedule as Kubernetes accepts it: five fields, no seconds or years, no
    /// `TZ=` prefix (the CronJob's `timeZone` field says that).
    pub fn parse(spec: &str) -> Result<Schedule, String> {
        let spec = spec.trim();
        if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
        }
        let fields = spec.split_whitespace().count();
        if !spec.starts_with('@') && fields != 5 {
            return Err(format!("expected exactly 5 fields, found {fields}: [{spec}]"));
        }
        CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            // `5/15` (from 5, every 15), as robfig/cron accepts it.
            .sloppy_ranges(true)
            .build()
            .parse(spec)
            .map(Schedule)
            .map_err(|e| e.to_string())
    }

    /// The first minute strictly after `after` that the schedule matches (UTC).
    pub fn next_after(&self, after: jiff::Timestamp) -> Option<jiff::Timestamp> {
        let start =
            chrono::DateTime::<chrono::Utc>::from_timestamp(after.as_second(), after.subsec_nanosecond() as u32)?;
        let next = self.0.find_next_occurrence(&start, false).ok()?;
        jiff::Timestamp::from_second(next.timestamp()).ok()
    }

    /// The first run strictly after `after` with the schedule read as wall-clock time in
    /// the IANA zone `tz` (the CronJob's `timeZone`). A wall time that a DST change skips
    /// runs at its later equivalent, as upstream's cron library does.
    pub fn next_after_in(&self, after: jiff::Timestamp, tz: &str) -> Result<Option<jiff::Timestamp>, String> {
        let zone = jiff::tz::TimeZone::get(tz).map_err(|e| format!("unknown time zone {tz:?}: {e}"))?;
        // Walk the schedule in civil time (as if it were UTC), then place the result in the zone.
        let civil = after.to_zoned(zone.clone()).datetime();
        let as_utc = jiff::tz::TimeZone::UTC.to_ambiguous_timestamp(civil).later().map_err(|e| e.to_string())?;
        let Some(next) = self.next_after(as_utc) else { return Ok(None) };
        let next_civil = next.to_zoned(jiff::tz::TimeZone::UTC).datetime();
        let placed = zone.to_ambiguous_timestamp(next_civil).later().map_err(|e| e.to_string())?;
        Ok(Some(placed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn standard_schedules_parse_and_bad_ones_are_refused() {
        for ok in [
            "*/5 * * * *",
            "0 0 * * 0",
            "15 3 1-7 * mon",
            "0 9-17/2 * jan-jun 1-5",
            "@hourly",
            "0 0 1 1 *",
            "0 0 * * 7",
            "5/15 * * * *",
        ] {
            assert!(Schedule::parse(ok).is_ok(), "{ok}");
        }
        assert!(Schedule::parse("bad").unwrap_err().contains("expected exactly 5 fields"));
        assert!(Schedule::parse("61 * * * *").is_err());
        assert!(Schedule::parse("* * * * * *").is_err());
        assert!(Schedule::parse("*/0 * * * *").is_err());
        assert!(Schedule::parse("TZ=UTC * * * * *").unwrap_err().contains("timeZone"));
        assert!(Schedule::parse("@often").is_err());
    }

    #[test]
    fn next_run_times() {
        let every5 = Schedule::parse("*/5 * * * *").unwrap();
        assert_eq!(every5.next_after(at("2026-11-24T12:03:10Z")), Some(at("2026-11-24T12:05:00Z")));
        assert_eq!(every5.next_after(at("2026-11-24T12:05:00Z")), Some(at("2026-11-24T12:10:00Z")));
        let nine = Schedule::parse("0 9 * * *").unwrap();
        assert_eq!(
            nine.next_after_in(at("2026-11-24T12:00:00Z"), "Europe/Berlin"),
            Ok(Some(at("2026-11-25T08:00:00Z")))
        );
        assert_eq!(
            nine.next_after_in(at("2026-07-01T00:00:00Z"), "Europe/Berlin"),
            Ok(Some(at("2026-07-01T07:00:00Z")))
        );
        assert!(nine.next_after_in(at("2026-07-01T00:00:00Z"), "Mars/Olympus").is_err());
        let weekly = Schedule::parse("@weekly").unwrap();
        // 2026-11-24 is a Tuesday: the next Sunday midnight.
        assert_eq!(weekly.next_after(at("2026-11-24T12:00:00Z")), Some(at("2026-11-29T00:00:00Z")));
        let leap = Schedule::parse("30 6 29 2 *").unwrap();
        assert_eq!(leap.next_after(at("2026-11-24T12:00:00Z")), Some(at("2028-02-29T06:30:00Z")));
        let either = Schedule::parse("0 0 13 * fri").unwrap();
        assert_eq!(either.next_after(at("2026-11-24T12:00:00Z")), Some(at("2026-11-27T00:00:00Z")));
    }
}
