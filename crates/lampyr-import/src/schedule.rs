//! The clouds' schedule expressions as a lampyr timer's `cron`: AWS's
//! `rate(5 minutes)` and six-field `cron(...)` (with `?`, a year, and days
//! of the week counted from 1 = Sunday), Function Compute's seconds-first
//! cron with an optional `CRON_TZ=` prefix, and `@every`.

use crate::yaml::{refuse, Res};

/// A lampyr schedule: the `cron` and, if the expression names one, the
/// time zone.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Schedule {
    pub cron: String,
    pub timezone: Option<String>,
}

/// AWS EventBridge's `rate(...)` or `cron(...)` (SAM's `Schedule`,
/// `ScheduleV2`).
pub(crate) fn aws(expr: &str, path: &str) -> Res<Schedule> {
    let e = expr.trim();
    if let Some(rate) = e.strip_prefix("rate(").and_then(|r| r.strip_suffix(')')) {
        let mut it = rate.split_whitespace();
        let (Some(n), Some(unit), None) = (it.next(), it.next(), it.next()) else {
            return refuse(
                path,
                format!("\"{expr}\" is not a rate: write e.g. rate(5 minutes)"),
            );
        };
        let n: u64 = n.parse().ok().filter(|n| *n > 0).map_or_else(
            || {
                refuse(
                    path,
                    format!("\"{expr}\": the rate must be a whole number above 0"),
                )
            },
            Ok,
        )?;
        let u = match unit.trim_end_matches('s') {
            "minute" => "m",
            "hour" => "h",
            "day" => "d",
            _ => {
                return refuse(
                    path,
                    format!("\"{expr}\": the unit is minute(s), hour(s) or day(s)"),
                )
            }
        };
        return Ok(Schedule {
            cron: format!("@every {n}{u}"),
            timezone: None,
        });
    }
    if let Some(cron) = e.strip_prefix("cron(").and_then(|r| r.strip_suffix(')')) {
        let f: Vec<&str> = cron.split_whitespace().collect();
        if f.len() != 6 {
            return refuse(path, format!("\"{expr}\": an AWS cron has 6 fields (minutes hours day-of-month month day-of-week year)"));
        }
        if !matches!(f[5], "*" | "?") {
            return refuse(path, format!("\"{expr}\": lampyr's timers have no year field: write * for the year, or remove the timer when it is done"));
        }
        let q = |s: &str| {
            if s == "?" {
                "*".to_string()
            } else {
                s.to_string()
            }
        };
        let dow = aws_days(f[4]).map_or_else(
            || refuse(path, format!("\"{expr}\": the day of the week \"{}\" is not one lampyr can read: use 1-7 (Sunday to Saturday) or SUN-SAT, with , - # L", f[4])),
            Ok,
        )?;
        return Ok(Schedule {
            cron: format!("{} {} {} {} {}", f[0], f[1], q(f[2]), f[3], q(&dow)),
            timezone: None,
        });
    }
    if e.starts_with("at(") {
        return refuse(path, format!("\"{expr}\": lampyr's timers repeat; a one-time schedule (at(...)) is not supported: call the function with `lampyr invoke --async` instead"));
    }
    refuse(
        path,
        format!("\"{expr}\" is not a schedule: write rate(5 minutes) or cron(0 12 * * ? *)"),
    )
}

/// AWS days of the week (1 = Sunday ... 7 = Saturday) as cron's
/// (0 = Sunday ... 6 = Saturday); names, `*`, `?` and `L` stay.
fn aws_days(field: &str) -> Option<String> {
    let day = |d: &str| -> Option<String> {
        if d.is_empty() || d.bytes().any(|b| b.is_ascii_alphabetic()) || d == "*" || d == "?" {
            return Some(d.to_string());
        }
        let n: u8 = d.parse().ok()?;
        (1..=7).contains(&n).then(|| (n - 1).to_string())
    };
    let part = |p: &str| -> Option<String> {
        // N#K (the K-th N of the month), NL (the last N), A-B, A/STEP.
        if let Some((d, k)) = p.split_once('#') {
            return Some(format!("{}#{k}", day(d)?));
        }
        if let Some((d, step)) = p.split_once('/') {
            return Some(format!("{}/{step}", range(d, &day)?));
        }
        if let Some(d) = p.strip_suffix('L').filter(|d| !d.is_empty()) {
            return Some(format!("{}L", day(d)?));
        }
        range(p, &day)
    };
    field
        .split(',')
        .map(part)
        .collect::<Option<Vec<_>>>()
        .map(|v| v.join(","))
}

fn range(p: &str, day: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    match p.split_once('-') {
        Some((a, b)) => Some(format!("{}-{}", day(a)?, day(b)?)),
        None => day(p),
    }
}

/// Function Compute's `CronExpression`/`cronExpression`: `@every 5m`, or
/// six fields, seconds first, in UTC unless `CRON_TZ=Zone` comes first.
pub(crate) fn fc(expr: &str, path: &str) -> Res<Schedule> {
    let mut e = expr.trim();
    let mut timezone = None;
    if let Some(rest) = e.strip_prefix("CRON_TZ=") {
        let (tz, cron) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        timezone = Some(tz.to_string());
        e = cron.trim();
    }
    if !e.starts_with('@') {
        let f: Vec<&str> = e.split_whitespace().collect();
        if let Some(dow) = f.get(5) {
            if dow.bytes().any(|b| b.is_ascii_digit()) {
                return refuse(path, format!("\"{expr}\": write the day of the week by name (MON-SUN): a number there is read differently by Function Compute and lampyr"));
            }
        }
    }
    Ok(Schedule {
        cron: e.to_string(),
        timezone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(s: &str) -> String {
        aws(s, "x").unwrap().cron
    }

    #[test]
    fn aws_rates_and_crons_become_lampyr_schedules() {
        assert_eq!(cron("rate(1 minute)"), "@every 1m");
        assert_eq!(cron("rate(5 minutes)"), "@every 5m");
        assert_eq!(cron("rate(2 hours)"), "@every 2h");
        assert_eq!(cron("rate(1 day)"), "@every 1d");
        assert_eq!(cron("cron(0 12 * * ? *)"), "0 12 * * *");
        assert_eq!(
            cron(
                "cron(15 10 ? * 6L 2019-2022)"
                    .replace(" 2019-2022", " *")
                    .as_str()
            ),
            "15 10 * * 5L"
        );
        assert_eq!(cron("cron(0 8 ? * 2-6 *)"), "0 8 * * 1-5");
        assert_eq!(cron("cron(0 8 ? * MON-FRI *)"), "0 8 * * MON-FRI");
        assert_eq!(cron("cron(0 8 ? * 1,7 *)"), "0 8 * * 0,6");
        assert_eq!(cron("cron(0 8 ? * 3#2 *)"), "0 8 * * 2#2");
        for s in [
            "cron(0 8 ? * 1 2030)",
            "rate(0 minutes)",
            "rate(5 weeks)",
            "at(2030-01-01T00:00:00)",
            "cron(0 8 * *)",
            "every day",
            "cron(0 8 ? * 9 *)",
        ] {
            assert!(aws(s, "Events.E.Properties.Schedule").is_err(), "{s}");
        }
        for s in [
            "rate(1 minute)",
            "cron(0 12 * * ? *)",
            "cron(0 8 ? * 2-6 *)",
            "cron(0 8 ? * 3#2 *)",
        ] {
            lampyr_api::schedule::Schedule::parse(&cron(s), "UTC").unwrap();
        }
    }

    #[test]
    fn fc_crons_keep_seconds_and_read_their_zone() {
        assert_eq!(
            fc("CRON_TZ=Asia/Shanghai 0 0 8 * * *", "x").unwrap(),
            Schedule {
                cron: "0 0 8 * * *".into(),
                timezone: Some("Asia/Shanghai".into())
            }
        );
        assert_eq!(fc("@every 5m", "x").unwrap().cron, "@every 5m");
        assert_eq!(fc("0 0/5 * * * *", "x").unwrap().cron, "0 0/5 * * * *");
        assert!(fc("0 0 8 * * 1-5", "x")
            .unwrap_err()
            .message
            .contains("by name"));
        assert!(fc("0 0 8 * * MON-FRI", "x").is_ok());
        lampyr_api::schedule::Schedule::parse("0 0/5 * * * *", "UTC").unwrap();
    }
}
