//! Unit names of a service's slice and its slots' scopes, escaped exactly
//! as systemd escapes them, and parsed back. Pure string work: no D-Bus.

/// Escapes `s` for use in a unit name exactly as `systemd-escape` does
/// (without `--path`): `/` becomes `-`; ASCII letters, digits, `:`, `_` and
/// `.` (except a leading `.`) stay; every other byte becomes `\xNN`.
pub fn escape_unit_component(s: &str) -> String {
    escape(s, true)
}

/// Like [`escape_unit_component`], but `/` becomes `\x2f` instead of `-`, so
/// the result never contains a dash. slotman builds its unit names from
/// these, so that a service or worker name can never add a level to the slice
/// tree or make one service's names match another's globs.
pub fn escape_name_component(s: &str) -> String {
    escape(s, false)
}

fn escape(s: &str, slash_to_dash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, &b) in s.as_bytes().iter().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b':' || b == b'_' || (b == b'.' && i > 0);
        if keep {
            out.push(char::from(b));
        } else if b == b'/' && slash_to_dash {
            out.push('-');
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Reverses [`escape_name_component`]. `None` if `s` is not something it
/// produced (a stray `-`, a bad `\x` sequence or bytes that are not UTF-8).
fn unescape_name_component(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                let hex = s
                    .get(i + 2..i + 4)
                    .filter(|_| bytes.get(i + 1) == Some(&b'x'))?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 4;
            }
            b'-' => return None,
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `slotman-SERVICE.slice`. Its parent is `slotman.slice`: systemd takes a
/// slice's parent from the prefix before the last dash.
pub fn slice_name(service: &str) -> String {
    format!("slotman-{}.slice", escape_name_component(service))
}

/// `slotman-SERVICE-WORKER-SLOT.scope`, e.g.
/// `slotman-billing-TestWorker-3.scope`.
///
/// systemd limits unit names to 255 bytes; with the prefix, the slot number
/// and the escaping of unusual characters (four bytes each), a service and
/// worker name of about 100 plain characters together still fit.
pub fn scope_name(service: &str, worker: &str, slot: u32) -> String {
    format!(
        "slotman-{}-{}-{slot}.scope",
        escape_name_component(service),
        escape_name_component(worker)
    )
}

/// A glob for [`Systemd::list_units`] matching every slot scope of
/// `service` and nothing of any other service. The escaped name needs no
/// quoting: it has no glob characters, and systemd matches unit patterns with
/// `FNM_NOESCAPE`, so the `\` of `\xNN` stands for itself.
pub fn scope_pattern(service: &str) -> String {
    format!("slotman-{}-*.scope", escape_name_component(service))
}

/// What a slot scope's name says, as [`scope_name`] built it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeId {
    pub service: String,
    pub worker: String,
    pub slot: u32,
}

/// Reads a name made by [`scope_name`] back (for example to tell which
/// worker a scope left by an earlier run belonged to). `None` for any other
/// unit name.
pub fn parse_scope_name(unit: &str) -> Option<ScopeId> {
    let body = unit.strip_prefix("slotman-")?.strip_suffix(".scope")?;
    // Escaped components contain no dash, so there are exactly three parts.
    let mut parts = body.split('-');
    let (service, worker, slot) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some(ScopeId {
        service: unescape_name_component(service)?,
        worker: unescape_name_component(worker)?,
        slot: parse_decimal(slot)?,
    })
}

/// A decimal number exactly as `format!` writes it (no sign, no leading
/// zeros), so that parsing a name and building it again round-trips.
fn parse_decimal(s: &str) -> Option<u32> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

/// The unit types slotman reads properties of; each has its own interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UnitKind {
    Scope,
    Slice,
    Service,
}

impl UnitKind {
    /// The kind of `unit`, by its suffix; `None` for kinds slotman never
    /// makes.
    pub(super) fn of(unit: &str) -> Option<UnitKind> {
        match unit.rsplit_once('.').map(|(_, suffix)| suffix) {
            Some("scope") => Some(UnitKind::Scope),
            Some("slice") => Some(UnitKind::Slice),
            Some("service") => Some(UnitKind::Service),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_by_hand() {
        assert_eq!(escape_unit_component("billing"), "billing");
        assert_eq!(escape_unit_component("a-b"), "a\\x2db");
        assert_eq!(escape_unit_component("a/b"), "a-b");
        assert_eq!(escape_unit_component(".x.y"), "\\x2ex.y");
        assert_eq!(escape_unit_component("ü"), "\\xc3\\xbc");
        assert_eq!(escape_name_component("a/b-c"), "a\\x2fb\\x2dc");
    }

    #[test]
    fn names() {
        assert_eq!(slice_name("billing"), "slotman-billing.slice");
        assert_eq!(slice_name("my-svc"), "slotman-my\\x2dsvc.slice");
        assert_eq!(
            scope_name("billing", "TestWorker", 3),
            "slotman-billing-TestWorker-3.scope"
        );
        assert_eq!(scope_pattern("my-svc"), "slotman-my\\x2dsvc-*.scope");
    }

    #[test]
    fn scope_names_round_trip() {
        for (service, worker) in [
            ("billing", "TestWorker"),
            ("a-b", "c/d"),
            ("ü.x", ".hidden"),
            ("", "w"),
        ] {
            let name = scope_name(service, worker, 7);
            let id = parse_scope_name(&name).expect(&name);
            assert_eq!(
                id,
                ScopeId {
                    service: service.into(),
                    worker: worker.into(),
                    slot: 7,
                }
            );
        }
        for bad in [
            "slotman-a-1.scope",
            "slotman-a-b-1-2.scope",
            "slotman-a-b-01.scope",
            "slotman-a-b-x.scope",
            "slotman-a-b-.scope",
            "slotman-a\\x2-b-1.scope",
            "slotman-a\\xzz-b-1.scope",
            "slotman-a-b-1.service",
            "other-a-b-1.scope",
        ] {
            assert_eq!(parse_scope_name(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_names_round_trip(service in "\\PC{0,12}", worker in "\\PC{0,12}", slot: u32) {
            let name = scope_name(&service, &worker, slot);
            let id = parse_scope_name(&name);
            proptest::prop_assert_eq!(id, Some(ScopeId { service, worker, slot }));
        }
    }
}
