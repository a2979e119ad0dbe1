//! When a timer fires: a cron expression (5 fields, or 6 with seconds) in
//! a time zone, or `@every DURATION`. Cron matching, time zones and
//! daylight-saving transitions are croner's and chrono-tz's.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// A parsed timer schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    Cron {
        cron: Box<croner::Cron>,
        tz: Tz,
    },
    /// Every this long, counted from the Unix epoch (so ticks fall on the
    /// same instants whenever the server starts).
    Every(Duration),
}

/// The shortest `@every` period.
pub const MIN_EVERY: Duration = Duration::from_secs(1);

impl Schedule {
    /// Parses `expr` in time zone `tz` (an IANA name such as
    /// `Asia/Shanghai`, or `UTC`).
    pub fn parse(expr: &str, tz: &str) -> Result<Schedule, String> {
        let tz = Tz::from_str(tz).map_err(|_| {
            format!("\"{tz}\" is not a time zone: use an IANA name such as \"UTC\", \"Europe/Berlin\" or \"Asia/Shanghai\"")
        })?;
        let expr = expr.trim();
        if let Some(rest) = expr.strip_prefix("@every") {
            let rest = rest.trim();
            let d = humantime::parse_duration(rest).map_err(|e| {
                format!("\"@every {rest}\": {e}; write a duration such as \"@every 30s\" or \"@every 5m\"")
            })?;
            if d < MIN_EVERY || d.subsec_nanos() != 0 {
                return Err(format!(
                    "\"@every {rest}\": the period must be a whole number of seconds, at least 1s"
                ));
            }
            return Ok(Schedule::Every(d));
        }
        let fields = expr.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "\"{expr}\" has {fields} fields: a cron expression has 5 (minute hour day-of-month month day-of-week) or 6 (seconds first), or write \"@every 30s\""
            ));
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| format!("\"{expr}\" is not a valid cron expression: {e}"))?;
        // A pattern that never matches (30 February) is refused now, not
        // found out at run time.
        let probe = Utc::now().with_timezone(&tz);
        cron.find_next_occurrence(&probe, false)
            .map_err(|e| format!("\"{expr}\" never fires: {e}"))?;
        Ok(Schedule::Cron {
            cron: Box::new(cron),
            tz,
        })
    }

    /// The first firing strictly after `t`.
    pub fn next_after(&self, t: SystemTime) -> Option<SystemTime> {
        match self {
            Schedule::Every(d) => {
                let since = t.duration_since(UNIX_EPOCH).ok()?;
                let period = d.as_secs();
                let next = (since.as_secs() / period + 1) * period;
                Some(UNIX_EPOCH + Duration::from_secs(next))
            }
            Schedule::Cron { cron, tz } => {
                let at = to_chrono(t)?.with_timezone(tz);
                let next = cron.find_next_occurrence(&at, false).ok()?;
                Some(from_chrono(&next.with_timezone(&Utc)))
            }
        }
    }

    /// The last firing at or before `t`.
    pub fn last_at_or_before(&self, t: SystemTime) -> Option<SystemTime> {
        match self {
            Schedule::Every(d) => {
                let since = t.duration_since(UNIX_EPOCH).ok()?;
                let period = d.as_secs();
                Some(UNIX_EPOCH + Duration::from_secs(since.as_secs() / period * period))
            }
            Schedule::Cron { cron, tz } => {
                let at = to_chrono(t)?.with_timezone(tz);
                let prev = cron.find_previous_occurrence(&at, true).ok()?;
                Some(from_chrono(&prev.with_timezone(&Utc)))
            }
        }
    }

    /// The next `n` firings after `t`.
    pub fn upcoming(&self, t: SystemTime, n: usize) -> Vec<SystemTime> {
        let mut out = Vec::with_capacity(n);
        let mut at = t;
        while out.len() < n {
            match self.next_after(at) {
                Some(next) => {
                    out.push(next);
                    at = next;
                }
                None => break,
            }
        }
        out
    }
}

/// `t` in whole seconds (cron matches seconds; a fraction would be kept
/// in what croner finds).
fn to_chrono(t: SystemTime) -> Option<DateTime<Utc>> {
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    Utc.timestamp_opt(d.as_secs() as i64, 0).single()
}

fn from_chrono(t: &DateTime<Utc>) -> SystemTime {
    let ms = t.timestamp_millis().max(0) as u64;
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc).unwrap()
    }

    fn show(t: SystemTime) -> String {
        humantime::format_rfc3339_seconds(t).to_string()
    }

    #[test]
    fn cron_with_and_without_seconds_in_a_time_zone() {
        let s = Schedule::parse("0 */5 * * * *", "UTC").unwrap();
        let frac = at("2026-01-01T10:02:03Z") + Duration::from_millis(697);
        assert_eq!(show(s.next_after(frac).unwrap()), "2026-01-01T10:05:00Z");
        let every_second = Schedule::parse("* * * * * *", "UTC").unwrap();
        let next = every_second.next_after(frac).unwrap();
        assert_eq!(next, at("2026-01-01T10:02:04Z"), "whole seconds");
        let next = s.upcoming(at("2026-01-01T10:02:03Z"), 3);
        let shown: Vec<String> = next.into_iter().map(show).collect();
        assert_eq!(
            shown,
            [
                "2026-01-01T10:05:00Z",
                "2026-01-01T10:10:00Z",
                "2026-01-01T10:15:00Z"
            ]
        );
        // 5 fields: minutes; 09:30 in Shanghai is 01:30 UTC.
        let s = Schedule::parse("30 9 * * *", "Asia/Shanghai").unwrap();
        assert_eq!(
            show(s.next_after(at("2026-01-01T00:00:00Z")).unwrap()),
            "2026-01-01T01:30:00Z"
        );
        assert_eq!(
            show(s.last_at_or_before(at("2026-01-02T01:30:00Z")).unwrap()),
            "2026-01-02T01:30:00Z"
        );
    }

    #[test]
    fn daylight_saving_is_the_time_zones() {
        // 02:30 does not exist in Berlin on 29 March 2026 (clocks go 02:00
        // → 03:00); the next day it does.
        let s = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let after = at("2026-03-28T12:00:00Z");
        let next = s.next_after(after).unwrap();
        assert!(next > after);
        assert_eq!(
            show(s.next_after(at("2026-03-30T00:00:00Z")).unwrap()),
            "2026-03-30T00:30:00Z"
        );
    }

    #[test]
    fn every_ticks_on_whole_periods() {
        let s = Schedule::parse("@every 30s", "UTC").unwrap();
        assert_eq!(
            show(s.next_after(at("2026-01-01T00:00:10Z")).unwrap()),
            "2026-01-01T00:00:30Z"
        );
        assert_eq!(
            show(s.next_after(at("2026-01-01T00:00:30Z")).unwrap()),
            "2026-01-01T00:01:00Z"
        );
        assert_eq!(
            show(s.last_at_or_before(at("2026-01-01T00:00:59Z")).unwrap()),
            "2026-01-01T00:00:30Z"
        );
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        for (expr, tz, want) in [
            ("* * *", "UTC", "has 3 fields"),
            ("61 * * * *", "UTC", "not a valid cron expression"),
            ("0 0 30 2 *", "UTC", "never fires"),
            ("@every soon", "UTC", "@every soon"),
            ("@every 500ms", "UTC", "at least 1s"),
            ("* * * * *", "Mars/Olympus", "not a time zone"),
        ] {
            let e = Schedule::parse(expr, tz).unwrap_err();
            assert!(e.contains(want), "{expr} in {tz}: {e}");
        }
    }
}
