//! Board support: which single-board computer the node is (from the device tree), what it
//! needs at boot for bramble, and how healthy it is: the supply and throttling state the
//! Raspberry Pi firmware reports, the hottest CPU thermal zone against the board's throttling
//! temperature, and an eMMC's own wear estimate. Profiles are the `key = value` files under
//! `board/` in the source tree, compiled in.
//!
//! Everything is read under a root directory ("/" in production, a recorded tree under
//! `tests/fixtures/board/` in tests), and a file that is missing or unreadable means
//! "unknown": the node then simply reports less. Called by [`super::facts`] (labels, health)
//! and [`super`] (node conditions); calls nothing else in bramble.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The profiles compiled into the binary: one file per board, grouped by family.
const PROFILE_FILES: &[(&str, &str)] = &[
    ("raspberrypi/raspberry-pi-3.conf", include_str!("../../board/raspberrypi/raspberry-pi-3.conf")),
    ("raspberrypi/raspberry-pi-4.conf", include_str!("../../board/raspberrypi/raspberry-pi-4.conf")),
    ("raspberrypi/raspberry-pi-5.conf", include_str!("../../board/raspberrypi/raspberry-pi-5.conf")),
    ("raspberrypi/raspberry-pi-zero-2-w.conf", include_str!("../../board/raspberrypi/raspberry-pi-zero-2-w.conf")),
    ("rockchip/radxa-rock-5b.conf", include_str!("../../board/rockchip/radxa-rock-5b.conf")),
];

/// The Raspberry Pi firmware's throttled bits, on kernels that still have the file (removed
/// from the Raspberry Pi kernel in March 2025).
const GET_THROTTLED: &str = "sys/devices/platform/soc/soc:firmware/get_throttled";

/// The node conditions this module adds, each True when something is wrong.
pub const CONDITION_TYPES: [&str; 3] = ["UnderVoltage", "ThermalThrottling", "StorageWear"];

/// Degrees below the throttling temperature a board must cool to before ThermalThrottling
/// turns False again: a board hovering at the limit would otherwise flip the condition (and
/// post a Warning Event) on every status round.
const THERMAL_HYSTERESIS_C: f64 = 5.0;

/// A board profile: how the board is recognised and what bramble needs to know about it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Board {
    /// The `bramble.io/board` label value (`raspberry-pi-4`).
    pub id: String,
    /// The `bramble.io/board-family` label value (`raspberry-pi`, `rockchip`).
    pub family: String,
    /// The board's name for people (logs, messages).
    pub name: String,
    /// Device-tree `compatible` strings that mean this board.
    pub compatible: Vec<String>,
    /// Prefixes of the device-tree `model` string, for device trees without a `compatible`
    /// this profile knows.
    pub model_prefixes: Vec<String>,
    /// The boot configuration file the memory cgroup is enabled in.
    pub boot_file: String,
    /// What to add to [`Board::boot_file`].
    pub boot_fragment: String,
    /// Where in the file it goes, and why there.
    pub boot_note: String,
    /// Types of the thermal zones that measure the CPU.
    pub thermal_zones: Vec<String>,
    /// Whether the board has the Raspberry Pi firmware's under-voltage and throttling report.
    pub firmware_throttled: bool,
    /// Where throttling begins.
    pub throttle_temp_c: f64,
    /// Where throttling is hard, on boards that have such a point.
    pub hard_throttle_temp_c: Option<f64>,
    /// The supply the board's maker specifies, for the under-voltage advice.
    pub supply: Option<String>,
    /// What an operator of this board should know, logged when the agent starts.
    pub notes: Vec<String>,
}

/// Why a profile file is not a profile.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ProfileError {
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: String },
    #[error("`{0}` is missing")]
    Missing(&'static str),
    #[error("neither `compatible` nor `model_prefix` is given: nothing would recognise the board")]
    Unrecognisable,
}

/// Keys that may repeat, each adding one item to a list.
const LIST_KEYS: [&str; 4] = ["compatible", "model_prefix", "thermal_zone", "note"];

impl Board {
    /// Parses a profile: `key = value` lines (the value is everything after the first `=`),
    /// `#` comment lines, list keys repeated. Unknown and repeated scalar keys are errors, so
    /// a typo cannot silently drop a setting.
    pub fn parse(text: &str) -> Result<Board, ProfileError> {
        let mut board = Board::default();
        let mut throttle = None;
        let mut seen = HashSet::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let problem = |problem: String| ProfileError::Line { line: index + 1, problem };
            let (key, value) = line.split_once('=').ok_or_else(|| problem("expected `key = value`".into()))?;
            let (key, value) = (key.trim(), value.trim().to_string());
            if value.is_empty() {
                return Err(problem(format!("`{key}` has no value")));
            }
            if !LIST_KEYS.contains(&key) && !seen.insert(key.to_string()) {
                return Err(problem(format!("`{key}` is given twice")));
            }
            let celsius = |v: &str| {
                v.parse::<f64>()
                    .ok()
                    .filter(|c| c.is_finite())
                    .ok_or_else(|| problem(format!("`{key}` must be degrees C")))
            };
            match key {
                "id" => board.id = value,
                "family" => board.family = value,
                "name" => board.name = value,
                "compatible" => board.compatible.push(value),
                "model_prefix" => board.model_prefixes.push(value),
                "boot_file" => board.boot_file = value,
                "boot_fragment" => board.boot_fragment = value,
                "boot_note" => board.boot_note = value,
                "thermal_zone" => board.thermal_zones.push(value),
                "firmware_throttled" => {
                    board.firmware_throttled =
                        value.parse().map_err(|_| problem(format!("`{key}` must be true or false, not {value:?}")))?
                }
                "throttle_temp_c" => throttle = Some(celsius(&value)?),
                "hard_throttle_temp_c" => board.hard_throttle_temp_c = Some(celsius(&value)?),
                "supply" => board.supply = Some(value),
                "note" => board.notes.push(value),
                other => return Err(problem(format!("unknown key `{other}`"))),
            }
        }
        for (key, value) in [
            ("id", &board.id),
            ("family", &board.family),
            ("name", &board.name),
            ("boot_file", &board.boot_file),
            ("boot_fragment", &board.boot_fragment),
        ] {
            if value.is_empty() {
                return Err(ProfileError::Missing(key));
            }
        }
        board.throttle_temp_c = throttle.ok_or(ProfileError::Missing("throttle_temp_c"))?;
        if board.compatible.is_empty() && board.model_prefixes.is_empty() {
            return Err(ProfileError::Unrecognisable);
        }
        Ok(board)
    }

    /// What to change at boot so pods' memory limits work on this board, for the agent's
    /// start-up error.
    pub fn boot_advice(&self) -> String {
        let how = if self.boot_note.is_empty() { String::new() } else { format!(" ({})", self.boot_note) };
        format!("add `{}` to {}{how}", self.boot_fragment, self.boot_file)
    }
}

/// Every compiled-in profile. One that does not parse is left out and logged; the unit tests
/// parse them all, so that only happens in a build that skipped them.
pub fn profiles() -> &'static [Board] {
    static PROFILES: OnceLock<Vec<Board>> = OnceLock::new();
    PROFILES.get_or_init(|| {
        PROFILE_FILES
            .iter()
            .filter_map(|(file, text)| match Board::parse(text) {
                Ok(board) => Some(board),
                Err(e) => {
                    tracing::error!(profile = %file, error = %e, "board profile left out");
                    None
                }
            })
            .collect()
    })
}

/// A sysfs or procfs text value, trimmed (device-tree strings end in NUL); None when the file
/// is missing, unreadable or empty.
fn read_text(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!text.is_empty()).then(|| text.to_string())
}

/// The board under `root` ("/" in production). The device tree's `compatible` strings are
/// tried first, most specific first; then the longest matching `model` prefix. None on machines
/// without a device tree (PCs, VMs) and on boards no profile knows.
pub fn detect(root: &Path) -> Option<Board> {
    let device_tree = root.join("proc/device-tree");
    if let Ok(bytes) = std::fs::read(device_tree.join("compatible")) {
        let strings = bytes.split(|b| *b == 0).filter_map(|s| std::str::from_utf8(s).ok()).filter(|s| !s.is_empty());
        for compatible in strings {
            if let Some(board) = profiles().iter().find(|b| b.compatible.iter().any(|c| c == compatible)) {
                return Some(board.clone());
            }
        }
    }
    let model = read_text(&device_tree.join("model"))?;
    profiles()
        .iter()
        .filter_map(|b| {
            let longest = b.model_prefixes.iter().filter(|p| model.starts_with(p.as_str())).map(|p| p.len()).max()?;
            Some((longest, b))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, b)| b.clone())
}

/// The `bramble.io/memory-class` value: MemTotal rounded up to a power of two from 512Mi.
/// The kernel and firmware keep some memory, so a 4 GB board reports about 3.7 GiB and is
/// `4Gi`. Above `16Gi` the classes keep doubling. None when the total is unknown (0).
pub fn memory_class(mem_total_kib: u64) -> Option<String> {
    if mem_total_kib == 0 {
        return None;
    }
    let mut class_mib: u64 = 512;
    while class_mib.saturating_mul(1024) < mem_total_kib {
        class_mib *= 2;
    }
    Some(if class_mib < 1024 { format!("{class_mib}Mi") } else { format!("{}Gi", class_mib / 1024) })
}

/// The labels a node registers with for its hardware: `bramble.io/board` and
/// `bramble.io/board-family` when the board is known, `bramble.io/memory-class` whenever the
/// memory is (also on PCs), so workloads can be placed by board or by memory size.
pub fn labels(board: Option<&Board>, mem_total_kib: u64) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(b) = board {
        out.push(("bramble.io/board", b.id.clone()));
        out.push(("bramble.io/board-family", b.family.clone()));
    }
    if let Some(class) = memory_class(mem_total_kib) {
        out.push(("bramble.io/memory-class", class));
    }
    out
}

/// The Raspberry Pi firmware's throttled bits, as `vcgencmd get_throttled` shows them: the
/// low bits say what is happening now, the same bits shifted by 16 that it has happened since
/// they were last cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled(pub u32);

impl Throttled {
    const UNDER_VOLTAGE: u32 = 0x1;
    const FREQUENCY_CAPPED: u32 = 0x2;
    const THROTTLED: u32 = 0x4;
    const SOFT_TEMP_LIMIT: u32 = 0x8;
    const OCCURRED_SHIFT: u32 = 16;

    /// Reads `throttled=0x50005` (vcgencmd), `0x50005`, or `50005`: the kernel's
    /// `get_throttled` file writes the bits in hex without the prefix (`%x`), so bare digits
    /// are hex too (read as decimal, `50005` would claim different bits).
    pub fn parse(text: &str) -> Option<Throttled> {
        let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
        let text = text.strip_prefix("throttled=").unwrap_or(text);
        let hex = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(text);
        u32::from_str_radix(hex, 16).ok().map(Throttled)
    }

    fn now(self, bit: u32) -> bool {
        self.0 & bit != 0
    }

    fn occurred(self, bit: u32) -> bool {
        self.0 & (bit << Self::OCCURRED_SHIFT) != 0
    }
}

/// The supply and throttling state the Raspberry Pi firmware reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PowerHealth {
    /// The supply is below 4.63 V now (or was within the hwmon driver's last 2 s poll).
    pub under_voltage_now: bool,
    /// It has been since boot (as far as anyone kept the firmware's sticky bit: see
    /// [`BoardHealth::remembering`]).
    pub under_voltage_since_boot: bool,
    /// The throttling bits: None where only the hwmon alarm is readable, which says nothing
    /// about them.
    pub throttled_now: Option<bool>,
    pub throttled_since_boot: Option<bool>,
    pub frequency_capped_now: Option<bool>,
    pub soft_temp_limit_now: Option<bool>,
    /// Where the figures come from, quoted in messages (`get_throttled 0x50005`).
    pub source: String,
    /// The supply the board's maker specifies.
    pub supply: Option<String>,
}

impl PowerHealth {
    /// The state `bits` say.
    pub fn from_bits(bits: Throttled, supply: Option<String>) -> PowerHealth {
        PowerHealth {
            under_voltage_now: bits.now(Throttled::UNDER_VOLTAGE),
            under_voltage_since_boot: bits.occurred(Throttled::UNDER_VOLTAGE),
            throttled_now: Some(bits.now(Throttled::THROTTLED)),
            throttled_since_boot: Some(bits.occurred(Throttled::THROTTLED)),
            frequency_capped_now: Some(bits.now(Throttled::FREQUENCY_CAPPED)),
            soft_temp_limit_now: Some(bits.now(Throttled::SOFT_TEMP_LIMIT)),
            source: format!("get_throttled {:#x}", bits.0),
            supply,
        }
    }
}

/// The hottest thermal zone that measures the CPU, and where the board throttles.
#[derive(Debug, Clone, PartialEq)]
pub struct Temperature {
    /// The zone's type (`cpu-thermal`).
    pub zone: String,
    pub celsius: f64,
    /// Where throttling begins: the profile's figure, or on boards without a profile the
    /// zone's lowest passive trip point; None when neither is known.
    pub throttle_c: Option<f64>,
    /// Where throttling is hard, on boards whose profile has such a point.
    pub hard_throttle_c: Option<f64>,
}

/// An eMMC's own wear estimate (JEDEC EXT_CSD, as the kernel's mmc driver shows it). SD
/// cards do not report one.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageWear {
    /// The disk (`mmcblk0`).
    pub device: String,
    /// Estimated life used, for the SLC (type A) and MLC (type B) areas: 0x01 means 0-10%,
    /// ... 0x0A 90-100%, 0x0B past its rated life.
    pub life_time: Option<(u8, u8)>,
    /// Reserved blocks used: 0x01 normal, 0x02 warning (80%), 0x03 urgent (90%).
    pub pre_eol: Option<u8>,
}

impl StorageWear {
    /// Near its end of life: a pre-EOL warning, or 80-90% of its estimated life used.
    pub fn worn(&self) -> bool {
        self.pre_eol.is_some_and(|p| p >= 0x02) || self.life_time.is_some_and(|(a, b)| a.max(b) >= 0x09)
    }

    fn severity(&self) -> (bool, u8, u8) {
        (self.worn(), self.pre_eol.unwrap_or(0), self.life_time.map_or(0, |(a, b)| a.max(b)))
    }
}

/// What the board says about its health; each part None where the board does not report it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BoardHealth {
    pub power: Option<PowerHealth>,
    pub temperature: Option<Temperature>,
    pub storage: Option<StorageWear>,
}

/// Reads the health of the board under `root` ("/" in production). Works without a profile
/// too: thermal zones and eMMC wear exist on most ARM boards and PCs.
pub fn health(root: &Path, board: Option<&Board>) -> BoardHealth {
    let firmware = board.is_none_or(|b| b.firmware_throttled);
    BoardHealth {
        power: if firmware { power(root, board) } else { None },
        temperature: temperature(root, board),
        storage: storage_wear(root),
    }
}

/// The supply state: the `rpi_volt` hwmon alarm where that device exists (kernels since
/// 4.19, which answer a read of the old `get_throttled` file with a kernel WARN and its
/// backtrace), else the firmware's `get_throttled` bits on the older kernels that have only
/// those.
fn power(root: &Path, board: Option<&Board>) -> Option<PowerHealth> {
    let supply = board.and_then(|b| b.supply.clone());
    if let Some(hwmon) = rpi_volt(root) {
        let alarm = read_text(&hwmon.join("in0_lcrit_alarm"))?;
        let under_voltage_now = match alarm.as_str() {
            "1" => true,
            "0" => false,
            _ => return None,
        };
        let source = format!("rpi_volt in0_lcrit_alarm {alarm}");
        return Some(PowerHealth { under_voltage_now, source, supply, ..PowerHealth::default() });
    }
    let bits = Throttled::parse(&read_text(&root.join(GET_THROTTLED))?)?;
    Some(PowerHealth::from_bits(bits, supply))
}

/// The Raspberry Pi firmware's hwmon device directory.
fn rpi_volt(root: &Path) -> Option<PathBuf> {
    std::fs::read_dir(root.join("sys/class/hwmon"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|dir| read_text(&dir.join("name")).as_deref() == Some("rpi_volt"))
}

/// One thermal zone as sysfs shows it.
struct Zone {
    kind: String,
    celsius: f64,
    lowest_passive_trip_c: Option<f64>,
}

/// Reads `thermal_zone*` directories in their kernel order; zones whose temperature cannot be
/// read (a sensor that is asleep answers with an error) are left out.
fn zones(root: &Path) -> Vec<Zone> {
    let Ok(entries) = std::fs::read_dir(root.join("sys/class/thermal")) else { return Vec::new() };
    let mut numbered: Vec<(u32, PathBuf)> = entries
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.strip_prefix("thermal_zone")?.parse().ok()?, e.path())))
        .collect();
    numbered.sort();
    let mut out = Vec::new();
    for (_, dir) in numbered {
        let millidegrees = |name: String| read_text(&dir.join(name))?.parse::<i64>().ok();
        let (Some(kind), Some(temp)) = (read_text(&dir.join("type")), millidegrees("temp".into())) else { continue };
        // Trip points are numbered from 0 without gaps; unset ones read 0 (x86_pkg_temp).
        let lowest_passive_trip_c = (0..32)
            .map_while(|n| Some((millidegrees(format!("trip_point_{n}_temp"))?, n)))
            .filter(|(trip, n)| {
                *trip > 0 && read_text(&dir.join(format!("trip_point_{n}_type"))).as_deref() == Some("passive")
            })
            .map(|(trip, _)| trip)
            .min()
            .map(|trip| trip as f64 / 1000.0);
        out.push(Zone { kind, celsius: temp as f64 / 1000.0, lowest_passive_trip_c });
    }
    out
}

/// The hottest zone among those the profile names (all zones when it names none of the ones
/// present, or there is no profile).
fn temperature(root: &Path, board: Option<&Board>) -> Option<Temperature> {
    let all = zones(root);
    let named = |z: &&Zone| board.is_some_and(|b| b.thermal_zones.contains(&z.kind));
    let relevant: Vec<&Zone> =
        if all.iter().any(|z| named(&z)) { all.iter().filter(named).collect() } else { all.iter().collect() };
    // The first of equally hot zones, so the answer does not depend on directory order.
    let hottest = relevant.into_iter().reduce(|best, z| if z.celsius > best.celsius { z } else { best })?;
    let (throttle_c, hard_throttle_c) = match board {
        Some(b) => (Some(b.throttle_temp_c), b.hard_throttle_temp_c),
        None => (hottest.lowest_passive_trip_c, None),
    };
    Some(Temperature { zone: hottest.kind.clone(), celsius: hottest.celsius, throttle_c, hard_throttle_c })
}

/// `mmcblk0`, `mmcblk1`: whole MMC disks, not their partitions or boot areas.
fn is_mmc_disk(name: &str) -> bool {
    name.strip_prefix("mmcblk").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A JEDEC figure as the mmc driver writes it (`0x01`); 0 means "not reported".
fn jedec_byte(text: &str) -> Option<u8> {
    u8::from_str_radix(text.trim_start_matches("0x"), 16).ok().filter(|v| *v != 0)
}

/// The most worn eMMC's estimate (the data disk, when it is an eMMC, is one of them).
fn storage_wear(root: &Path) -> Option<StorageWear> {
    let entries = std::fs::read_dir(root.join("sys/block")).ok()?;
    entries
        .flatten()
        .filter_map(|entry| {
            let device = entry.file_name().into_string().ok().filter(|n| is_mmc_disk(n))?;
            let dir = entry.path().join("device");
            let life_time = read_text(&dir.join("life_time")).and_then(|t| {
                let mut parts = t.split_whitespace().map(jedec_byte);
                Some((parts.next()??, parts.next()??))
            });
            let pre_eol = read_text(&dir.join("pre_eol_info")).and_then(|t| jedec_byte(&t));
            (life_time.is_some() || pre_eol.is_some()).then_some(StorageWear { device, life_time, pre_eol })
        })
        .max_by_key(StorageWear::severity)
}

/// A node condition about the board, True (`bad`) when something is wrong, like MemoryPressure.
#[derive(Debug, Clone, PartialEq)]
pub struct BoardCondition {
    pub kind: &'static str,
    pub bad: bool,
    pub reason: &'static str,
    pub message: String,
}

impl BoardHealth {
    /// This reading with what earlier readings since boot saw. The kernel's hwmon driver asks
    /// the firmware to clear its "has occurred" bits every 2 s, so the agent keeps them itself
    /// (`earlier` is the previous round's result, which already holds the rounds before).
    pub fn remembering(mut self, earlier: &BoardHealth) -> BoardHealth {
        if let (Some(now), Some(before)) = (self.power.as_mut(), earlier.power.as_ref()) {
            now.under_voltage_since_boot |= before.under_voltage_now || before.under_voltage_since_boot;
            if let Some(since) = now.throttled_since_boot.as_mut() {
                *since |= before.throttled_now == Some(true) || before.throttled_since_boot == Some(true);
            }
        }
        self
    }

    /// The conditions this health supports, each only where its data exists.
    /// `was_throttling`: ThermalThrottling was True before (it stays True until the board is
    /// [`THERMAL_HYSTERESIS_C`] below the throttling temperature).
    pub fn conditions(&self, was_throttling: bool) -> Vec<BoardCondition> {
        let mut out = Vec::new();
        if let Some(power) = &self.power {
            out.push(under_voltage(power));
        }
        if let Some(c) = thermal_throttling(self.temperature.as_ref(), self.power.as_ref(), was_throttling) {
            out.push(c);
        }
        if let Some(wear) = &self.storage {
            out.push(storage_condition(wear));
        }
        out
    }
}

fn under_voltage(power: &PowerHealth) -> BoardCondition {
    let source = &power.source;
    let said = match (power.under_voltage_now, power.under_voltage_since_boot) {
        (true, true) => {
            format!("the board's supply is under-voltage now ({source}); under-voltage has occurred since boot")
        }
        (true, false) => format!("the board's supply is under-voltage now ({source})"),
        (false, true) => format!("under-voltage has occurred since boot ({source})"),
        (false, false) => {
            let message = format!("no under-voltage reported ({source})");
            return BoardCondition { kind: "UnderVoltage", bad: false, reason: "NoUnderVoltage", message };
        }
    };
    let supply = match &power.supply {
        Some(s) => format!("a {s} supply"),
        None => "a supply of the rating the board's maker specifies".to_string(),
    };
    let message = format!("{said}: use {supply} and a short, thick cable");
    BoardCondition { kind: "UnderVoltage", bad: true, reason: "UnderVoltageDetected", message }
}

fn thermal_throttling(
    temperature: Option<&Temperature>,
    power: Option<&PowerHealth>,
    was_throttling: bool,
) -> Option<BoardCondition> {
    let judged = temperature.and_then(|t| Some((t, t.throttle_c?)));
    let firmware = power.filter(|p| p.throttled_now.is_some());
    if judged.is_none() && firmware.is_none() {
        return None;
    }
    let mut bad = false;
    let mut said = Vec::new();
    if let Some((t, throttle)) = judged {
        let hard = t.hard_throttle_c.map(|h| format!(" (hard limit {h} C)")).unwrap_or_default();
        let (zone, celsius) = (&t.zone, t.celsius);
        if celsius >= throttle {
            bad = true;
            said.push(format!("{zone} at {celsius:.1} C, at or above the throttling temperature {throttle} C{hard}"));
        } else if was_throttling && celsius >= throttle - THERMAL_HYSTERESIS_C {
            bad = true;
            let clears = throttle - THERMAL_HYSTERESIS_C;
            let cooling = format!("cooling from the throttling temperature {throttle} C (clears below {clears} C)");
            said.push(format!("{zone} at {celsius:.1} C, {cooling}"));
        } else {
            said.push(format!("{zone} at {celsius:.1} C, below the throttling temperature {throttle} C{hard}"));
        }
    }
    if let Some(p) = firmware {
        let flags = [
            (p.throttled_now, "throttled now"),
            (p.frequency_capped_now, "ARM frequency capped now"),
            (p.soft_temp_limit_now, "soft temperature limit active now"),
        ];
        let active: Vec<&str> = flags.iter().filter(|(on, _)| *on == Some(true)).map(|(_, what)| *what).collect();
        bad |= !active.is_empty();
        let occurred = if p.throttled_since_boot == Some(true) { "; throttling has occurred since boot" } else { "" };
        let state = if active.is_empty() { "not throttling".to_string() } else { active.join(", ") };
        said.push(format!("the firmware reports {state} ({}){occurred}", p.source));
    }
    let reason = if bad { "Throttled" } else { "NotThrottled" };
    Some(BoardCondition { kind: "ThermalThrottling", bad, reason, message: said.join("; ") })
}

/// `0x03` as "20-30%".
fn life_used(value: u8) -> String {
    match value {
        1..=10 => format!("{}-{}%", (value - 1) * 10, value * 10),
        0x0B => "past its rated life".to_string(),
        other => format!("unknown ({other:#04x})"),
    }
}

fn storage_condition(wear: &StorageWear) -> BoardCondition {
    let mut said = Vec::new();
    if let Some(pre_eol) = wear.pre_eol {
        let level = match pre_eol {
            0x01 => "normal".to_string(),
            0x02 => "warning: 80% of its reserved blocks used".to_string(),
            0x03 => "urgent: 90% of its reserved blocks used".to_string(),
            other => format!("unknown ({other:#04x})"),
        };
        said.push(format!("pre-EOL {level} (pre_eol_info {pre_eol:#04x})"));
    }
    if let Some((a, b)) = wear.life_time {
        said.push(format!(
            "estimated life used {} (type A) / {} (type B) (life_time {a:#04x} {b:#04x})",
            life_used(a),
            life_used(b)
        ));
    }
    let bad = wear.worn();
    let advice = if bad { ": back up the node's data and plan to replace the storage" } else { "" };
    BoardCondition {
        kind: "StorageWear",
        bad,
        reason: if bad { "StorageNearEndOfLife" } else { "StorageHealthy" },
        message: format!("eMMC {} reports {}{advice}", wear.device, said.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/board").join(name)
    }

    /// The board, its health, and its conditions, as the agent would see them on `name`.
    fn seen_on(name: &str) -> (Option<Board>, BoardHealth, Vec<BoardCondition>) {
        let root = fixture(name);
        assert!(root.is_dir(), "fixture {name} is missing");
        let board = detect(&root);
        let health = health(&root, board.as_ref());
        let conditions = health.conditions(false);
        (board, health, conditions)
    }

    fn condition<'a>(conditions: &'a [BoardCondition], kind: &str) -> Option<&'a BoardCondition> {
        conditions.iter().find(|c| c.kind == kind)
    }

    fn fixture_mem_total_kib(name: &str) -> u64 {
        let text = std::fs::read_to_string(fixture(name).join("proc/meminfo")).unwrap();
        let line = text.lines().find(|l| l.starts_with("MemTotal:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn every_compiled_in_profile_parses_with_a_unique_id_and_compatible() {
        for (file, text) in PROFILE_FILES {
            let board = Board::parse(text).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(file.ends_with(&format!("{}.conf", board.id)), "{file} holds profile {}", board.id);
        }
        assert_eq!(profiles().len(), PROFILE_FILES.len());
        let ids: HashSet<_> = profiles().iter().map(|b| &b.id).collect();
        assert_eq!(ids.len(), profiles().len());
        let all: Vec<_> = profiles().iter().flat_map(|b| &b.compatible).collect();
        assert_eq!(all.iter().collect::<HashSet<_>>().len(), all.len(), "a compatible string in two profiles");
    }

    #[test]
    fn profile_parser_reads_keys_lists_and_comments() {
        let board = Board::parse(
            "# a comment\nid = b\nfamily = f\nname = B\ncompatible = x,b\ncompatible = x,b2\n\
             boot_file = /boot/env.txt\nboot_fragment = extraargs=a=b c\nthrottle_temp_c = 85\n\
             hard_throttle_temp_c = 90.5\nfirmware_throttled = true\nthermal_zone = soc-thermal\n",
        )
        .unwrap();
        assert_eq!(board.compatible, ["x,b", "x,b2"]);
        assert_eq!(board.boot_fragment, "extraargs=a=b c");
        assert_eq!((board.throttle_temp_c, board.hard_throttle_temp_c), (85.0, Some(90.5)));
        assert!(board.firmware_throttled);
        assert_eq!(board.boot_advice(), "add `extraargs=a=b c` to /boot/env.txt");
    }

    #[test]
    fn profile_parser_names_the_line_and_the_mistake() {
        let base = "id = b\nfamily = f\nname = B\ncompatible = x,b\nboot_file = f\nboot_fragment = g\n";
        let err = |extra: &str| Board::parse(&format!("{base}{extra}")).unwrap_err().to_string();
        assert_eq!(err("throttle_temp_c = 80\nthrotle = 1\n"), "line 8: unknown key `throtle`");
        assert_eq!(err("throttle_temp_c = hot\n"), "line 7: `throttle_temp_c` must be degrees C");
        assert_eq!(err("throttle_temp_c = 80\nid = c\n"), "line 8: `id` is given twice");
        assert_eq!(err("throttle_temp_c = 80\nno equals sign\n"), "line 8: expected `key = value`");
        assert_eq!(
            err("throttle_temp_c = 80\nfirmware_throttled = yes\n"),
            "line 8: `firmware_throttled` must be true or false, not \"yes\""
        );
        assert_eq!(err(""), "`throttle_temp_c` is missing");
        let unrecognisable = base.replace("compatible = x,b\n", "") + "throttle_temp_c = 80\n";
        assert_eq!(Board::parse(&unrecognisable), Err(ProfileError::Unrecognisable));
    }

    #[test]
    fn get_throttled_decodes_in_every_form_it_is_printed() {
        for text in ["0x50005", "throttled=0x50005\n", "50005\n", "0X50005"] {
            let power = PowerHealth::from_bits(Throttled::parse(text).unwrap(), None);
            assert!(power.under_voltage_now && power.under_voltage_since_boot, "{text}");
            assert_eq!(power.throttled_now, Some(true), "{text}");
            assert_eq!(power.throttled_since_boot, Some(true), "{text}");
            assert_eq!(power.frequency_capped_now, Some(false), "{text}");
            assert_eq!(power.soft_temp_limit_now, Some(false), "{text}");
            assert_eq!(power.source, "get_throttled 0x50005");
        }
        let soft = PowerHealth::from_bits(Throttled::parse("throttled=0x80008").unwrap(), None);
        assert_eq!((soft.soft_temp_limit_now, soft.under_voltage_now), (Some(true), false));
        assert_eq!(Throttled::parse("throttled=0x0"), Some(Throttled(0)));
        assert_eq!(Throttled::parse("0x2"), Some(Throttled(Throttled::FREQUENCY_CAPPED)));
        for garbage in ["", "throttled=", "0xzz", "-1"] {
            assert_eq!(Throttled::parse(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn memory_classes_round_up() {
        let gib = 1024 * 1024;
        assert_eq!(memory_class(0), None);
        assert_eq!(memory_class(439_516).as_deref(), Some("512Mi"));
        assert_eq!(memory_class(512 * 1024).as_deref(), Some("512Mi"));
        assert_eq!(memory_class(929_436).as_deref(), Some("1Gi"));
        assert_eq!(memory_class(1_894_128).as_deref(), Some("2Gi"));
        assert_eq!(memory_class(3_884_428).as_deref(), Some("4Gi"));
        assert_eq!(memory_class(8 * gib).as_deref(), Some("8Gi"));
        assert_eq!(memory_class(8 * gib + 1).as_deref(), Some("16Gi"));
        assert_eq!(memory_class(62 * gib).as_deref(), Some("64Gi"));
        assert!(memory_class(u64::MAX).is_some());
    }

    #[test]
    fn raspberry_pi_3_prefers_the_hwmon_alarm_to_the_deprecated_file() {
        let (board, health, conditions) = seen_on("raspberry-pi-3");
        let board = board.unwrap();
        assert_eq!((board.id.as_str(), board.family.as_str()), ("raspberry-pi-3", "raspberry-pi"));
        let power = health.power.unwrap();
        assert_eq!(power.source, "rpi_volt in0_lcrit_alarm 0");
        assert_eq!(power.throttled_now, None, "get_throttled must not be read where rpi_volt exists");
        let under_voltage = condition(&conditions, "UnderVoltage").unwrap();
        assert_eq!((under_voltage.bad, under_voltage.reason), (false, "NoUnderVoltage"));
        assert_eq!(under_voltage.message, "no under-voltage reported (rpi_volt in0_lcrit_alarm 0)");
        let thermal = condition(&conditions, "ThermalThrottling").unwrap();
        assert_eq!(thermal.message, "cpu-thermal at 54.8 C, below the throttling temperature 80 C (hard limit 85 C)");
        assert!(health.storage.is_none(), "an SD card reports no wear");
        assert!(board.boot_advice().contains("cgroup_memory=1 cgroup_enable=memory` to /boot/firmware/cmdline.txt"));
        let labels = labels(Some(&board), fixture_mem_total_kib("raspberry-pi-3"));
        assert_eq!(labels.last().unwrap(), &("bramble.io/memory-class", "1Gi".to_string()));
    }

    #[test]
    fn raspberry_pi_4_healthy_labels_and_conditions() {
        let (board, health, conditions) = seen_on("raspberry-pi-4");
        let board = board.unwrap();
        assert_eq!(
            labels(Some(&board), fixture_mem_total_kib("raspberry-pi-4")),
            [
                ("bramble.io/board", "raspberry-pi-4".to_string()),
                ("bramble.io/board-family", "raspberry-pi".to_string()),
                ("bramble.io/memory-class", "4Gi".to_string()),
            ]
        );
        assert_eq!(health.temperature.as_ref().unwrap().celsius, 48.686);
        let kinds: Vec<_> = conditions.iter().map(|c| (c.kind, c.bad)).collect();
        assert_eq!(kinds, [("UnderVoltage", false), ("ThermalThrottling", false)]);
    }

    #[test]
    fn raspberry_pi_4_under_voltage_and_throttled_from_get_throttled() {
        let (board, health, conditions) = seen_on("raspberry-pi-4-under-voltage");
        assert_eq!(board.unwrap().id, "raspberry-pi-4");
        let power = health.power.as_ref().unwrap();
        assert!(power.under_voltage_now && power.under_voltage_since_boot);
        let under_voltage = condition(&conditions, "UnderVoltage").unwrap();
        assert_eq!((under_voltage.bad, under_voltage.reason), (true, "UnderVoltageDetected"));
        assert_eq!(
            under_voltage.message,
            "the board's supply is under-voltage now (get_throttled 0x50005); under-voltage has occurred since boot: \
             use a 5.1 V / 3 A USB-C supply and a short, thick cable"
        );
        let thermal = condition(&conditions, "ThermalThrottling").unwrap();
        assert_eq!((thermal.bad, thermal.reason), (true, "Throttled"));
        assert_eq!(
            thermal.message,
            "cpu-thermal at 61.3 C, below the throttling temperature 80 C (hard limit 85 C); the firmware reports \
             throttled now (get_throttled 0x50005); throttling has occurred since boot"
        );
    }

    #[test]
    fn raspberry_pi_5_cool_and_hot() {
        let (board, _, conditions) = seen_on("raspberry-pi-5");
        let board = board.unwrap();
        assert_eq!(board.id, "raspberry-pi-5");
        assert!(board.notes.iter().any(|n| n.contains("16K-page kernel")));
        assert!(!condition(&conditions, "ThermalThrottling").unwrap().bad);

        let (board, health, conditions) = seen_on("raspberry-pi-5-hot");
        assert_eq!(board.unwrap().id, "raspberry-pi-5");
        assert_eq!(health.temperature.as_ref().unwrap().celsius, 86.2);
        let thermal = condition(&conditions, "ThermalThrottling").unwrap();
        assert_eq!((thermal.bad, thermal.reason), (true, "Throttled"));
        assert_eq!(
            thermal.message,
            "cpu-thermal at 86.2 C, at or above the throttling temperature 80 C (hard limit 85 C)"
        );
    }

    #[test]
    fn throttling_clears_only_well_below_the_limit() {
        let at = |celsius| BoardHealth {
            temperature: Some(Temperature {
                zone: "cpu-thermal".into(),
                celsius,
                throttle_c: Some(80.0),
                hard_throttle_c: None,
            }),
            ..BoardHealth::default()
        };
        assert!(!at(77.0).conditions(false)[0].bad);
        let cooling = &at(77.0).conditions(true)[0];
        assert!(cooling.bad);
        assert_eq!(
            cooling.message,
            "cpu-thermal at 77.0 C, cooling from the throttling temperature 80 C (clears below 75 C)"
        );
        assert!(!at(74.9).conditions(true)[0].bad);
    }

    #[test]
    fn zero_2_w_and_a_pi_400_known_only_by_its_model_string() {
        let (board, _, _) = seen_on("raspberry-pi-zero-2-w");
        assert_eq!(board.unwrap().id, "raspberry-pi-zero-2-w");
        assert_eq!(memory_class(fixture_mem_total_kib("raspberry-pi-zero-2-w")).as_deref(), Some("512Mi"));
        let (board, health, conditions) = seen_on("raspberry-pi-400-model-only");
        assert_eq!(board.unwrap().id, "raspberry-pi-4");
        assert_eq!(health, BoardHealth::default());
        assert!(conditions.is_empty());
    }

    #[test]
    fn emmc_at_pre_eol_warning_is_storage_wear() {
        let (board, health, conditions) = seen_on("raspberry-pi-cm4-emmc-worn");
        assert_eq!(board.unwrap().id, "raspberry-pi-4");
        let wear = health.storage.unwrap();
        assert_eq!((wear.device.as_str(), wear.life_time, wear.pre_eol), ("mmcblk0", Some((0x05, 0x07)), Some(0x02)));
        let storage = condition(&conditions, "StorageWear").unwrap();
        assert_eq!((storage.bad, storage.reason), (true, "StorageNearEndOfLife"));
        assert_eq!(
            storage.message,
            "eMMC mmcblk0 reports pre-EOL warning: 80% of its reserved blocks used (pre_eol_info 0x02), estimated life \
             used 40-50% (type A) / 60-70% (type B) (life_time 0x05 0x07): back up the node's data and plan to replace \
             the storage"
        );
        let nearly_spent = StorageWear { device: "mmcblk0".into(), life_time: Some((0x01, 0x09)), pre_eol: Some(0x01) };
        assert!(nearly_spent.worn());
    }

    #[test]
    fn rock_5b_uses_its_own_zones_and_has_no_firmware_report() {
        let (board, health, conditions) = seen_on("radxa-rock-5b");
        let board = board.unwrap();
        assert_eq!((board.id.as_str(), board.family.as_str()), ("radxa-rock-5b", "rockchip"));
        assert!(
            board
                .boot_advice()
                .starts_with("add `extraargs=cgroup_enable=memory swapaccount=1` to /boot/armbianEnv.txt")
        );
        assert!(health.power.is_none());
        let temperature = health.temperature.unwrap();
        assert_eq!((temperature.zone.as_str(), temperature.throttle_c), ("bigcore0-thermal", Some(85.0)));
        let kinds: Vec<_> = conditions.iter().map(|c| (c.kind, c.bad)).collect();
        assert_eq!(kinds, [("ThermalThrottling", false), ("StorageWear", false)]);
        assert_eq!(
            condition(&conditions, "StorageWear").unwrap().message,
            "eMMC mmcblk0 reports pre-EOL normal (pre_eol_info 0x01), estimated life used 0-10% (type A) / 0-10% (type B) \
             (life_time 0x01 0x01)"
        );
    }

    #[test]
    fn a_pc_without_device_tree_gets_only_a_memory_class() {
        let (board, health, conditions) = seen_on("x86-no-device-tree");
        assert_eq!(board, None);
        assert_eq!(
            labels(None, fixture_mem_total_kib("x86-no-device-tree")),
            [("bramble.io/memory-class", "16Gi".to_string())]
        );
        // Its zones are read, but no passive trip is set (0), so nothing says where it throttles.
        let temperature = health.temperature.unwrap();
        assert_eq!((temperature.zone.as_str(), temperature.throttle_c), ("x86_pkg_temp", None));
        assert!(conditions.is_empty());
    }

    #[test]
    fn nothing_to_read_is_unknown_not_an_error() {
        let nowhere = fixture("no-such-machine");
        assert_eq!(detect(&nowhere), None);
        assert_eq!(health(&nowhere, None), BoardHealth::default());
    }

    #[test]
    fn under_voltage_seen_earlier_stays_until_reboot() {
        let alarm = |on: bool| BoardHealth {
            power: Some(PowerHealth {
                under_voltage_now: on,
                source: format!("rpi_volt in0_lcrit_alarm {}", on as u8),
                supply: Some("5.1 V / 5 A USB-C (USB-PD)".into()),
                ..PowerHealth::default()
            }),
            ..BoardHealth::default()
        };
        let first = alarm(true);
        let later = alarm(false).remembering(&first);
        let again = alarm(false).remembering(&later);
        let c = &again.conditions(false)[0];
        assert!(c.bad);
        assert_eq!(
            c.message,
            "under-voltage has occurred since boot (rpi_volt in0_lcrit_alarm 0): use a 5.1 V / 5 A USB-C (USB-PD) \
             supply and a short, thick cable"
        );
        assert!(!alarm(false).conditions(false)[0].bad);
    }
}
