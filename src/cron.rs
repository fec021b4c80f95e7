//! CronJob schedules as Kubernetes reads them (the standard five fields of
//! `robfig/cron`'s `ParseStandard`): minute, hour, day of month, month, day of week, each a
//! `*`, a value, a range `a-b`, a step `*/n` or `a-b/n`, or a list of those; month and day
//! names (`jan`, `mon`); and the `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
//! `@midnight` and `@hourly` shorthands. The API validates with it; the CronJob controller
//! computes run times with it.
//!
//! Hand-written: the cron crates parse six- or seven-field (seconds, years) dialects and
//! would accept schedules Kubernetes refuses.

/// A parsed schedule: which values of each field match.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Both day fields restricted: a day matches either (cron's rule).
    either_day: bool,
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(s: &str, min: u32, max: u32, names: &[&str], name_base: u32) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + name_base);
    }
    let v: u32 =
        s.parse().map_err(|_| format!("failed to parse int from {s}: strconv.Atoi: parsing {s:?}: invalid syntax"))?;
    if v < min {
        return Err(format!("beginning of range ({v}) below minimum ({min}): {s}"));
    }
    if v > max {
        return Err(format!("end of range ({v}) above maximum ({max}): {s}"));
    }
    Ok(v)
}

/// Parses one field into a bit set; `star` says whether it was `*` (or `?`).
fn field(text: &str, min: u32, max: u32, names: &[&str], name_base: u32) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let mut star = false;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| format!("failed to parse int from {s}"))?;
                if step == 0 {
                    return Err(format!("step of range should be a positive number: {part}"));
                }
                (r, Some(step))
            }
            None => (part, None),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            star = step.is_none() && text == range;
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, min, max, names, name_base)?, value(b, min, max, names, name_base)?)
        } else {
            let v = value(range, min, max, names, name_base)?;
            // `a/n` means from a to the end, every n.
            (v, if step.is_some() { max } else { v })
        };
        if lo > hi {
            return Err(format!("beginning of range ({lo}) beyond end of range ({hi}): {part}"));
        }
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, star))
}

impl Schedule {
    /// Parses a schedule, with `robfig/cron`'s error messages.
    pub fn parse(spec: &str) -> Result<Schedule, String> {
        let spec = spec.trim();
        if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
        }
        let expanded = match spec {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            s if s.starts_with('@') => return Err(format!("unrecognized descriptor: {s}")),
            s => s,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!("expected exactly 5 fields, found {}: {fields:?}", fields.len()).replace('"', ""));
        }
        let (minutes, _) = field(fields[0], 0, 59, &[], 0)?;
        let (hours, _) = field(fields[1], 0, 23, &[], 0)?;
        let (days, dom_star) = field(fields[2], 1, 31, &[], 0)?;
        let (months, _) = field(fields[3], 1, 12, &MONTHS, 1)?;
        let (mut weekdays, dow_star) = field(fields[4], 0, 7, &DAYS, 0)?;
        // 7 is Sunday too.
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Schedule { minutes, hours, days, months, weekdays, either_day: !dom_star && !dow_star })
    }

    // Run times are for the CronJob controller (the controllers' issue); only tests call
    // them until it lands.
    #[cfg_attr(not(test), allow(dead_code))]
    fn day_matches(&self, day: u32, weekday: u32) -> bool {
        let dom = self.days & (1 << day) != 0;
        let dow = self.weekdays & (1 << weekday) != 0;
        if self.either_day { dom || dow } else { dom && dow }
    }

    /// The first minute strictly after `after` that the schedule matches (UTC), searching
    /// at most five years ahead.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn next_after(&self, after: jiff::Timestamp) -> Option<jiff::Timestamp> {
        let start = after.checked_add(jiff::SignedDuration::from_secs(60 - after.as_second().rem_euclid(60))).ok()?;
        let mut t = start.to_zoned_datetime(jiff::tz::TimeZone::UTC);
        let limit = t.year() + 5;
        while t.year() <= limit {
            let month = t.month() as u32;
            if self.months & (1 << month) == 0 {
                t = t.first_of_month().ok()?.checked_add(jiff::Span::new().months(1)).ok()?.start_of_day().ok()?;
                continue;
            }
            let weekday = t.weekday().to_sunday_zero_offset() as u32;
            if !self.day_matches(t.day() as u32, weekday) {
                t = t.checked_add(jiff::Span::new().days(1)).ok()?.start_of_day().ok()?;
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = t.checked_add(jiff::Span::new().hours(1)).ok()?.with().minute(0).build().ok()?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t = t.checked_add(jiff::Span::new().minutes(1)).ok()?;
                continue;
            }
            return Some(t.timestamp());
        }
        None
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
        ] {
            assert!(Schedule::parse(ok).is_ok(), "{ok}");
        }
        assert!(Schedule::parse("bad").unwrap_err().contains("expected exactly 5 fields"));
        assert!(Schedule::parse("61 * * * *").unwrap_err().contains("above maximum"));
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
        let weekly = Schedule::parse("@weekly").unwrap();
        // 2026-11-24 is a Tuesday: the next Sunday midnight.
        assert_eq!(weekly.next_after(at("2026-11-24T12:00:00Z")), Some(at("2026-11-29T00:00:00Z")));
        let yearly = Schedule::parse("30 6 29 2 *").unwrap();
        assert_eq!(yearly.next_after(at("2026-11-24T12:00:00Z")), Some(at("2028-02-29T06:30:00Z")));
        let either = Schedule::parse("0 0 13 * fri").unwrap();
        assert_eq!(either.next_after(at("2026-11-24T12:00:00Z")), Some(at("2026-11-27T00:00:00Z")));
    }
}
