//! Parsers for the value syntaxes of the config file: durations, sizes,
//! percentages, job-server addresses and names. Pure functions from text to
//! value; an `Err` is the message that follows `FILE:LINE: KEY: `.

use std::net::{Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::DEFAULT_PORT;

/// Size units, largest first: systemd's (binary, K = 1024).
const SIZE_UNITS: [(char, u64); 6] = [
    ('E', 1 << 60),
    ('P', 1 << 50),
    ('T', 1 << 40),
    ('G', 1 << 30),
    ('M', 1 << 20),
    ('K', 1 << 10),
];

/// The longest duration a config may give: 100 years (humantime's "100y").
/// Longer is "never" in all but name, and far longer cannot be added to a
/// clock reading at all (`Instant + "500000000000y"` overflows).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// A duration string: humantime syntax ("10s", "500ms", "1m 30s"), or bare
/// digits meaning seconds (as systemd's `TimeoutSec=15`); at most
/// [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let too_long = || format!("`{text}` is longer than 100 years, the most a duration may be");
    let d = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        t.parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| too_long())?
    } else {
        humantime::parse_duration(t).map_err(|e| match e {
            humantime::DurationError::NumberOverflow => too_long(),
            _ => format!(
                "`{text}` is not a duration; write it like \"10s\", \"500ms\" or \"1m 30s\""
            ),
        })?
    };
    if d > MAX_DURATION {
        return Err(too_long());
    }
    Ok(d)
}

/// Whole seconds as a config number gives them, at most [`MAX_DURATION`].
pub fn duration_from_secs(secs: u64) -> Result<Duration, String> {
    let d = Duration::from_secs(secs);
    if d > MAX_DURATION {
        return Err(format!(
            "{secs} seconds is longer than 100 years, the most a duration may be"
        ));
    }
    Ok(d)
}

/// The instant `d` after `t`, for deadlines a config duration sets: `None`,
/// meaning never, when `d` is beyond [`MAX_DURATION`] (a config cannot give
/// that; a caller that skipped validation can) or the clock cannot hold it.
/// Capped so, a deadline also leaves room for the timer's own rounding.
pub fn after(t: Instant, d: Duration) -> Option<Instant> {
    if d > MAX_DURATION {
        return None;
    }
    t.checked_add(d)
}

/// A duration for a person: whole seconds from 10 s up (`1m 30s`), whole
/// milliseconds below (`250ms`), never `10s 1ms 114us 139ns`.
pub fn human_duration(d: Duration) -> String {
    let rounded = if d >= Duration::from_secs(10) {
        Duration::from_secs(d.as_secs() + u64::from(d.subsec_millis() >= 500))
    } else {
        Duration::from_millis(d.as_millis().min(u128::from(u64::MAX)) as u64)
    };
    humantime::format_duration(rounded).to_string()
}

/// A size: bytes, or a number with a binary unit as systemd reads them
/// ("512K", "256M", "1.5G"; K = 1024); "KiB" spellings are accepted too.
/// `infinity` is handled by the caller, where it is allowed.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not a size; write it like \"512K\", \"256M\" or \"1G\"");
    let t = text.trim();
    let digits_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    let multiplier = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        u => {
            let letter = u.chars().next().ok_or_else(bad)?;
            let rest = &u[letter.len_utf8()..];
            if !(rest.is_empty() || rest == "IB") {
                // "MB" is left out on purpose: it reads as 10^6 to many people.
                return Err(bad());
            }
            SIZE_UNITS
                .iter()
                .find(|(l, _)| *l == letter)
                .map(|(_, m)| *m)
                .ok_or_else(bad)?
        }
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(bad());
    }
    let too_large = || format!("`{text}` is too large (the most is 16E less one byte)");
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    // Checked: 39 digits fit a u128, not times a unit.
    let mut bytes = whole
        .checked_mul(u128::from(multiplier))
        .ok_or_else(too_large)?;
    if !fraction.is_empty() {
        // Exact to the byte without floats: floor(0.fraction * multiplier).
        // Digits past 19 cannot change the result for a u64 multiplier.
        let digits = &fraction[..fraction.len().min(19)];
        let scale = 10u128.pow(digits.len() as u32);
        let frac: u128 = digits.parse().map_err(|_| bad())?;
        bytes = bytes
            .checked_add(frac * u128::from(multiplier) / scale)
            .ok_or_else(too_large)?;
    }
    u64::try_from(bytes).map_err(|_| too_large())
}

/// The shortest exact spelling of `bytes` that [`parse_size`] reads back.
pub fn format_size(bytes: u64) -> String {
    SIZE_UNITS
        .iter()
        .find(|(_, m)| bytes != 0 && bytes.is_multiple_of(*m))
        .map(|(l, m)| format!("{}{l}", bytes / m))
        .unwrap_or_else(|| bytes.to_string())
}

/// A CPU quota: "50%", "200%" (percent of one CPU, as systemd's CPUQuota=).
pub fn parse_percent(text: &str) -> Result<u32, String> {
    let bad = || format!("`{text}` is not a percentage; write it like \"50%\" or \"200%\"");
    let number = text.trim().strip_suffix('%').ok_or_else(bad)?.trim_end();
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let percent: u32 = number
        .parse()
        .map_err(|_| format!("`{text}` is too large"))?;
    if percent == 0 {
        return Err("must be more than 0%".into());
    }
    Ok(percent)
}

/// A job server as "host:port", the port filled in with 4730 when left out.
/// IPv6 literals come back bracketed (`"[::1]:4730"`) so that the result always
/// splits at its last colon.
pub fn parse_job_server(text: &str) -> Result<String, String> {
    let t = text.trim();
    let bad_host = |h: &str| {
        h.is_empty()
            || h.chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '[' | ']' | '@'))
    };
    let (host, port) = if let Some(rest) = t.strip_prefix('[') {
        // "[v6]" or "[v6]:port".
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{text}`: missing `]` after an IPv6 address"))?;
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err(format!("`{text}`: `{addr}` is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("`{text}`: expected `:PORT` after `]`"))?,
            ),
        };
        (format!("[{addr}]"), port)
    } else if t.matches(':').count() > 1 {
        // A bare IPv6 address; a port needs brackets to be told apart.
        if t.parse::<Ipv6Addr>().is_err() {
            return Err(format!(
                "`{text}` is not \"host:port\" (write IPv6 addresses as \"[::1]:4730\")"
            ));
        }
        (format!("[{t}]"), None)
    } else {
        match t.split_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (t.to_owned(), None),
        }
    };
    if bad_host(host.trim_start_matches('[').trim_end_matches(']')) {
        return Err(format!("`{text}` is not \"host:port\""));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => {
                return Err(format!(
                    "`{text}`: port `{p}` is not a number from 1 to 65535"
                ))
            }
        },
    };
    Ok(format!("{host}:{port}"))
}

/// The Prometheus endpoint: an IP address and port.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!("`{text}` is not an IP address and port; write it like \"127.0.0.1:9477\"")
    })
}

/// Worker names become parts of systemd unit names and Gearman function
/// names, so they keep to characters both take unescaped.
pub fn check_worker_name(name: &str) -> Result<(), String> {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        Ok(())
    } else {
        Err(format!(
            "worker name `{name}` may only use letters, digits, `_`, `.` and `-`"
        ))
    }
}

/// Gearman function names (and prefixes) are any bytes but NUL, which
/// separates a packet's arguments; spaces and UTF-8 work end to end (the
/// stdio framing's `JOBX` carries them). Tab and newline do not: they
/// separate the fields and lines of the job server's admin `status`, from
/// which the queue depth is read. So no control characters at all.
pub fn check_function_name(what: &str, name: &str) -> Result<(), String> {
    if name.chars().any(char::is_control) {
        Err(format!(
            "{what} `{}` must not contain control characters such as tab, newline or NUL",
            name.escape_debug()
        ))
    } else {
        Ok(())
    }
}

/// User and group names as systemd's `User=`/`Group=` and the control
/// socket's group take them: a name or a numeric id.
pub fn check_account_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, ':' | '/' | ','))
    {
        return Err(format!(
            "`{}` is not a user or group name",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// Edit distance, for "did you mean" hints on unknown keys.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes() {
        let cases: &[(&str, Result<u64, ()>)] = &[
            ("0", Ok(0)),
            ("1024", Ok(1024)),
            ("512K", Ok(512 * 1024)),
            ("256M", Ok(256 << 20)),
            ("256m", Ok(256 << 20)),
            ("1G", Ok(1 << 30)),
            ("1GiB", Ok(1 << 30)),
            ("2T", Ok(2 << 40)),
            ("1.5G", Ok(3 << 29)),
            ("0.5K", Ok(512)),
            ("100B", Ok(100)),
            (" 64M ", Ok(64 << 20)),
            ("15E", Ok(15 << 60)),
            ("16E", Err(())),
            ("18446744073709551616", Err(())),
            ("", Err(())),
            ("M", Err(())),
            ("1MB", Err(())),
            ("1X", Err(())),
            ("1.", Err(())),
            (".5M", Err(())),
            ("1.2.3M", Err(())),
            ("-1M", Err(())),
            ("1 M", Err(())),
            ("340282366920938463463374607431768211455E", Err(())),
            ("340282366920938463463374607431768211456", Err(())),
            ("15.99999999999999999999999E", Ok(u64::MAX)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text).map_err(|_| ()), *want, "{text:?}");
        }
    }

    #[test]
    fn durations() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("10s", Some(Duration::from_secs(10))),
            ("500ms", Some(Duration::from_millis(500))),
            ("1m 30s", Some(Duration::from_secs(90))),
            ("1h30m", Some(Duration::from_secs(5400))),
            ("15", Some(Duration::from_secs(15))),
            ("0", Some(Duration::ZERO)),
            ("", None),
            ("soon", None),
            ("-1s", None),
            ("10 parsecs", None),
            ("100y", Some(MAX_DURATION)),
            ("3155760000", Some(MAX_DURATION)),
            ("100y 1ns", None),
            ("3155760001", None),
            ("500000000000y", None),
            ("99999999999999999999999y", None),
            ("18446744073709551616", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text).ok(), *want, "{text:?}");
        }
        assert!(parse_duration("500000000000y")
            .unwrap_err()
            .contains("longer than 100 years"));
        assert_eq!(duration_from_secs(3_155_760_000), Ok(MAX_DURATION));
        assert!(duration_from_secs(u64::MAX).is_err());
    }

    #[test]
    fn deadlines_past_the_maximum_are_never() {
        let now = Instant::now();
        assert_eq!(after(now, Duration::ZERO), Some(now));
        assert_eq!(after(now, MAX_DURATION), now.checked_add(MAX_DURATION));
        assert!(after(now, MAX_DURATION).is_some());
        assert_eq!(after(now, MAX_DURATION + Duration::from_nanos(1)), None);
        assert_eq!(after(now, Duration::MAX), None);
    }

    #[test]
    fn percentages() {
        assert_eq!(parse_percent("50%"), Ok(50));
        assert_eq!(parse_percent("200%"), Ok(200));
        assert_eq!(parse_percent(" 5 %"), Ok(5));
        for bad in ["50", "0%", "%", "12.5%", "-5%", "99999999999%"] {
            assert!(parse_percent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn job_servers() {
        let cases: &[(&str, Option<&str>)] = &[
            ("127.0.0.1:4730", Some("127.0.0.1:4730")),
            ("gearman.example", Some("gearman.example:4730")),
            ("gearman.example:7003", Some("gearman.example:7003")),
            ("::1", Some("[::1]:4730")),
            ("[::1]", Some("[::1]:4730")),
            ("[fe80::1]:99", Some("[fe80::1]:99")),
            ("", None),
            (":4730", None),
            ("host:", None),
            ("host:0", None),
            ("host:65536", None),
            ("host:port", None),
            ("a b:1", None),
            ("[::1", None),
            ("[nope]:1", None),
            ("::1:4730:x", None),
            ("tcp://host:1", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_job_server(text).ok().as_deref(), *want, "{text:?}");
        }
    }

    #[test]
    fn names() {
        assert!(check_worker_name("img-resize_2.v1").is_ok());
        for bad in ["", "a b", "a/b", "ä", "a:b"] {
            assert!(check_worker_name(bad).is_err(), "{bad:?}");
        }
        for good in ["reverse::x", "a b", "r\u{e9}sum\u{e9}", " "] {
            assert!(check_function_name("function", good).is_ok(), "{good:?}");
        }
        for bad in ["a\tb", "a\0b", "a\nb", "a\rb", "a\u{85}b", "\u{7f}"] {
            assert!(check_function_name("function", bad).is_err(), "{bad:?}");
        }
        assert!(check_account_name("www-data").is_ok());
        assert!(check_account_name("1000").is_ok());
        assert!(check_account_name("a:b").is_err());
    }

    #[test]
    fn distances() {
        assert_eq!(edit_distance("max", "max"), 0);
        assert_eq!(edit_distance("mx", "max"), 1);
        assert_eq!(edit_distance("work_left", "workleft"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    proptest! {
        #[test]
        fn format_size_reads_back(bytes in any::<u64>()) {
            prop_assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
        }

        #[test]
        fn every_unit_multiplies(n in 0u64..1_000_000, unit in 0usize..SIZE_UNITS.len()) {
            let (letter, multiplier) = SIZE_UNITS[unit];
            let parsed = parse_size(&format!("{n}{letter}"));
            match n.checked_mul(multiplier) {
                Some(bytes) => prop_assert_eq!(parsed, Ok(bytes)),
                None => prop_assert!(parsed.is_err()),
            }
        }

        /// Extreme numbers with every unit, through both parsers: never a
        /// panic, and what is accepted fits the clock and a u64.
        #[test]
        fn extreme_values_are_refused_not_overflowed(
            whole in prop_oneof![
                Just("0".to_string()),
                any::<u64>().prop_map(|n| n.to_string()),
                any::<u128>().prop_map(|n| n.to_string()),
                "[0-9]{1,60}",
            ],
            fraction in proptest::option::of("[0-9]{1,30}"),
            unit in proptest::sample::select(vec![
                "", "s", "ms", "us", "ns", "m", "h", "d", "w", "M", "y", "years",
                "K", "M", "G", "T", "P", "E", "KiB", "EiB", "B",
            ]),
        ) {
            let text = match &fraction {
                Some(f) => format!("{whole}.{f}{unit}"),
                None => format!("{whole}{unit}"),
            };
            if let Ok(d) = parse_duration(&text) {
                prop_assert!(d <= MAX_DURATION, "{text}: {d:?}");
                prop_assert!(Instant::now().checked_add(d).is_some());
            }
            let _ = parse_size(&text);
        }

        #[test]
        fn any_text_is_a_value_or_an_error(text in "\\PC{0,40}") {
            let _ = parse_duration(&text);
            let _ = parse_size(&text);
            let _ = parse_percent(&text);
            let _ = parse_job_server(&text);
        }

        #[test]
        fn whole_seconds_read_back(secs in 0u64..10_000_000) {
            prop_assert_eq!(parse_duration(&secs.to_string()), Ok(Duration::from_secs(secs)));
            prop_assert_eq!(parse_duration(&format!("{secs}s")), Ok(Duration::from_secs(secs)));
        }
    }

    #[test]
    fn durations_read_as_a_person_writes_them() {
        for (d, text) in [
            (Duration::new(10, 1_114_139), "10s"),
            (Duration::new(90, 600_000_000), "1m 31s"),
            (Duration::from_micros(250_400), "250ms"),
            (Duration::from_millis(3_500), "3s 500ms"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(human_duration(d), text);
        }
    }
}
