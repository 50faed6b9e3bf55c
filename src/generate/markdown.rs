//! Markdown → man(7) roff, for the subset that docs/configuration.md uses:
//! headings, paragraphs, fenced code, pipe tables, flat bullet and numbered
//! lists, and inline code, bold, italics and links. So slotman.toml(5) is
//! rendered from the very text of the configuration reference, never kept
//! beside it.
//!
//! Choices a terminal forces: a table becomes one `.TP` entry per row (its
//! first cell the term, the other cells as `Header: value`), since a
//! four-column table of sentences does not fit 80 columns; inline code is
//! bold, as man pages show literals; a link keeps its text, and an absolute
//! URL follows it in angle brackets. Anything else renders as a paragraph.

use roff::{bold, italic, roman, Inline, Roff};

/// A block of the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// `#`…`######` and the text.
    Heading(usize, String),
    Paragraph(String),
    /// The lines between the fences, as written.
    Code(Vec<String>),
    List {
        ordered: bool,
        /// Items apart by blank lines (markdown's "loose" list).
        loose: bool,
        /// Each item's text, continuation lines joined.
        items: Vec<String>,
    },
    Table {
        header: Vec<String>,
        rows: Vec<Vec<String>>,
    },
}

/// Splits `md` into blocks. Never fails: what it does not recognise is a
/// paragraph, and an unclosed fence runs to the end.
pub fn blocks(md: &str) -> Vec<Block> {
    let lines: Vec<&str> = md.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim().is_empty() {
            i += 1;
        } else if let Some(fence) = fence(line) {
            let mut code = Vec::new();
            i += 1;
            while i < lines.len() && !lines[i].trim_start().starts_with(fence) {
                code.push(lines[i].to_string());
                i += 1;
            }
            i += 1; // the closing fence
            out.push(Block::Code(code));
        } else if let Some((level, text)) = heading(line) {
            out.push(Block::Heading(level, text.to_string()));
            i += 1;
        } else if line.starts_with('|') {
            let mut cells = Vec::new();
            while i < lines.len() && lines[i].starts_with('|') {
                if !is_separator(lines[i]) {
                    cells.push(table_row(lines[i]));
                }
                i += 1;
            }
            let mut rows = cells.into_iter();
            let header = rows.next().unwrap_or_default();
            out.push(Block::Table {
                header,
                rows: rows.collect(),
            });
        } else if let Some((ordered, _)) = list_item(line) {
            let (items, loose, next) = list(&lines, i, ordered);
            out.push(Block::List {
                ordered,
                loose,
                items,
            });
            i = next;
        } else {
            let mut text = Vec::new();
            while i < lines.len()
                && !lines[i].trim().is_empty()
                && (text.is_empty() || !starts_block(lines[i]))
            {
                text.push(lines[i].trim());
                i += 1;
            }
            out.push(Block::Paragraph(text.join(" ")));
        }
    }
    out
}

/// The fence a code block opens with (its backticks or tildes).
fn fence(line: &str) -> Option<&'static str> {
    let t = line.trim_start();
    if t.starts_with("```") {
        Some("```")
    } else if t.starts_with("~~~") {
        Some("~~~")
    } else {
        None
    }
}

fn heading(line: &str) -> Option<(usize, &str)> {
    let level = line.bytes().take_while(|&b| b == b'#').count();
    let rest = &line[level..];
    match (1..=6).contains(&level) && rest.starts_with(' ') {
        true => Some((level, rest.trim().trim_end_matches('#').trim_end())),
        false => None,
    }
}

/// A list marker at the start of `line`: (ordered, the text after it).
fn list_item(line: &str) -> Option<(bool, &str)> {
    if let Some(rest) = line.strip_prefix("- ").or_else(|| line.strip_prefix("* ")) {
        return Some((false, rest));
    }
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    match digits > 0 && line[digits..].starts_with(". ") {
        true => Some((true, &line[digits + 2..])),
        false => None,
    }
}

/// Whether `line` starts another block (it ends a paragraph).
fn starts_block(line: &str) -> bool {
    fence(line).is_some()
        || heading(line).is_some()
        || line.starts_with('|')
        || list_item(line).is_some()
}

/// The items of the list starting at `lines[start]`, whether blank lines
/// part them, and the index after it. Indented lines continue an item,
/// also after a blank line; a blank line followed by an unindented line
/// that is not an item ends the list.
fn list(lines: &[&str], start: usize, ordered: bool) -> (Vec<String>, bool, usize) {
    let mut items: Vec<Vec<&str>> = Vec::new();
    let mut loose = false;
    let mut i = start;
    while i < lines.len() {
        let line = lines[i];
        if line.trim().is_empty() {
            let next = lines[i..]
                .iter()
                .position(|l| !l.trim().is_empty())
                .map(|p| i + p);
            match next {
                Some(n)
                    if lines[n].starts_with("  ")
                        || list_item(lines[n]).is_some_and(|(o, _)| o == ordered) =>
                {
                    loose = true;
                    i = n;
                    continue;
                }
                _ => break,
            }
        }
        match list_item(line) {
            Some((o, text)) if o == ordered => items.push(vec![text.trim()]),
            Some(_) => break,
            None if line.starts_with(' ') || !starts_block(line) => {
                // An indented continuation, or a lazy one right below.
                if let Some(item) = items.last_mut() {
                    item.push(line.trim());
                }
            }
            None => break,
        }
        i += 1;
    }
    let items = items.into_iter().map(|parts| parts.join(" ")).collect();
    (items, loose, i)
}

/// `|---|:--:|` and the like.
fn is_separator(line: &str) -> bool {
    line.chars().all(|c| matches!(c, '|' | '-' | ':' | ' ')) && line.contains('-')
}

/// The cells of `| a | b |`: split at `|` outside code spans, `\|` kept.
fn table_row(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|');
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut in_code = false;
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cell.push('|');
                chars.next();
            }
            '`' => {
                in_code = !in_code;
                cell.push(c);
            }
            '|' if !in_code => cells.push(std::mem::take(&mut cell).trim().to_string()),
            _ => cell.push(c),
        }
    }
    cells.push(cell.trim().to_string());
    cells
}

/// Inline text as roff runs: code and bold → bold, emphasis → italics,
/// links → their text (an absolute URL in angle brackets after it).
/// Whitespace outside code collapses to single spaces.
pub fn inlines(text: &str) -> Vec<Inline> {
    let mut runs = Runs::default();
    let mut bold_on = false;
    let mut italic_on = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let style = |bold_on: bool, italic_on: bool| match (bold_on, italic_on) {
            (true, _) => Style::Bold,
            (false, true) => Style::Italic,
            _ => Style::Roman,
        };
        if c == '`' {
            let ticks = rest.bytes().take_while(|&b| b == b'`').count();
            let after = &rest[ticks..];
            if let Some(end) = closing_ticks(after, ticks) {
                let code = &after[..end];
                let code = match code.starts_with(' ') && code.ends_with(' ') && code.trim() != "" {
                    true => &code[1..code.len() - 1],
                    false => code,
                };
                runs.push(Style::Bold, code);
                rest = &after[end + ticks..];
                continue;
            }
            runs.push(style(bold_on, italic_on), &rest[..ticks]);
            rest = after;
        } else if let Some(after) = rest.strip_prefix("**") {
            if bold_on || after.contains("**") {
                bold_on = !bold_on;
            } else {
                runs.push(style(bold_on, italic_on), "**");
            }
            rest = after;
        } else if c == '*' && (italic_on || opens_emphasis(&rest[1..])) {
            italic_on = !italic_on;
            rest = &rest[1..];
        } else if c == '[' {
            match link(rest) {
                Some((label, target, len)) => {
                    for inline in inlines(label) {
                        runs.push_inline(inline, bold_on, italic_on);
                    }
                    if (target.starts_with("http://") || target.starts_with("https://"))
                        && label != target
                    {
                        runs.push(style(bold_on, italic_on), " <");
                        runs.push(Style::Roman, target);
                        runs.push(style(bold_on, italic_on), ">");
                    }
                    rest = &rest[len..];
                }
                None => {
                    runs.push(style(bold_on, italic_on), "[");
                    rest = &rest[1..];
                }
            }
        } else if c == '\\' && rest[1..].starts_with(|n: char| n.is_ascii_punctuation()) {
            let n = rest[1..].chars().next().map_or(1, char::len_utf8);
            runs.push(style(bold_on, italic_on), &rest[1..1 + n]);
            rest = &rest[1 + n..];
        } else {
            let len = c.len_utf8();
            runs.push(style(bold_on, italic_on), &rest[..len]);
            rest = &rest[len..];
        }
    }
    runs.finish()
}

/// Whether the text after a `*` can be emphasis: a word starts right
/// after it and another `*` closes it later.
fn opens_emphasis(after: &str) -> bool {
    after.starts_with(|c: char| !c.is_whitespace() && c != '*') && after.contains('*')
}

/// Where the run of exactly `n` backticks closing a code span starts.
fn closing_ticks(s: &str, n: usize) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'`' {
            let run = bytes[i..].iter().take_while(|&&b| b == b'`').count();
            if run == n {
                return Some(i);
            }
            i += run;
        } else {
            i += 1;
        }
    }
    None
}

/// `[label](target)` at the start of `s`: label, target, length in bytes.
/// Brackets inside code spans of the label do not count.
fn link(s: &str) -> Option<(&str, &str, usize)> {
    let mut in_code = false;
    let mut close = None;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            '`' => in_code = !in_code,
            '[' if !in_code => return None,
            ']' if !in_code => {
                close = Some(i);
                break;
            }
            _ => {}
        }
    }
    let close = close?;
    let target_start = close + 2;
    if !s[close..].starts_with("](") {
        return None;
    }
    let end = s[target_start..].find(')')? + target_start;
    Some((&s[1..close], &s[target_start..end], end + 1))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Roman,
    Bold,
    Italic,
}

/// Runs of text in one style, whitespace collapsed outside bold code.
#[derive(Default)]
struct Runs {
    done: Vec<(Style, String)>,
}

impl Runs {
    fn push(&mut self, style: Style, text: &str) {
        for c in text.chars() {
            let c = if c.is_whitespace() && style != Style::Bold {
                ' '
            } else {
                c
            };
            let last_space =
                self.done.last().is_some_and(|(_, t)| t.ends_with(' ')) || self.done.is_empty();
            if c == ' ' && last_space && style != Style::Bold {
                continue;
            }
            match self.done.last_mut() {
                Some((s, t)) if *s == style => t.push(c),
                _ => self.done.push((style, c.to_string())),
            }
        }
    }

    fn push_inline(&mut self, inline: Inline, bold_on: bool, italic_on: bool) {
        let (style, text) = match inline {
            Inline::Bold(t) => (Style::Bold, t),
            Inline::Italic(t) if !bold_on => (Style::Italic, t),
            Inline::Roman(t) if bold_on => (Style::Bold, t),
            Inline::Roman(t) if italic_on => (Style::Italic, t),
            Inline::Roman(t) | Inline::Italic(t) => (Style::Roman, t),
            Inline::LineBreak => return,
        };
        self.push(style, &text);
    }

    fn finish(mut self) -> Vec<Inline> {
        if let Some((_, t)) = self.done.last_mut() {
            let trimmed = t.trim_end().len();
            t.truncate(trimmed);
        }
        self.done
            .into_iter()
            .filter(|(_, t)| !t.is_empty())
            .map(|(style, t)| match style {
                Style::Roman => roman(t),
                Style::Bold => bold(t),
                Style::Italic => italic(t),
            })
            .collect()
    }
}

/// The plain text of inline markdown (for headings and terms).
pub fn plain(text: &str) -> String {
    inlines(text)
        .into_iter()
        .map(|i| match i {
            Inline::Roman(t) | Inline::Bold(t) | Inline::Italic(t) => t,
            Inline::LineBreak => " ".to_string(),
        })
        .collect()
}

/// A control line's argument: quoted by the roff crate when it has spaces,
/// so quotes, backslashes and dashes are escaped here.
fn arg(text: &str) -> String {
    text.replace('\\', r"\e")
        .replace('"', r"\(dq")
        .replace('-', r"\-")
}

/// Appends `blocks` to `roff`. Level-1 headings are left out (the page
/// title says it); level 2 becomes `.SH` in capitals, deeper ones `.SS`.
pub fn render(roff: &mut Roff, blocks: &[Block]) {
    for block in blocks {
        match block {
            Block::Heading(1, _) => {}
            Block::Heading(2, text) => {
                roff.control("SH", [arg(&upper_prose(text)).as_str()]);
            }
            Block::Heading(_, text) => {
                roff.control("SS", [arg(&plain(text)).as_str()]);
            }
            Block::Paragraph(text) => {
                roff.control("PP", []);
                roff.text(inlines(text));
            }
            Block::Code(lines) => {
                roff.control("PP", []);
                roff.control("RS", ["4"]);
                roff.control("nf", []);
                for line in lines {
                    roff.text([roman(line.as_str())]);
                }
                roff.control("fi", []);
                roff.control("RE", []);
            }
            Block::List {
                ordered,
                loose,
                items,
            } => {
                if !loose {
                    // No space between the items of a tight list.
                    roff.control("PD", ["0"]);
                }
                for (n, item) in items.iter().enumerate() {
                    match ordered {
                        true => roff.control("IP", [format!("{}.", n + 1).as_str(), "4"]),
                        false => roff.control("IP", [r"\(bu", "2"]),
                    };
                    roff.text(inlines(item));
                }
                if !loose {
                    roff.control("PD", []);
                }
                roff.control("PP", []);
            }
            Block::Table { header, rows } => {
                for row in rows {
                    let Some(term) = row.first() else { continue };
                    roff.control("TP", []);
                    roff.text(inlines(term));
                    let mut text: Vec<Inline> = Vec::new();
                    for (i, cell) in row.iter().enumerate().skip(1) {
                        if cell.is_empty() || cell == "—" {
                            continue;
                        }
                        if !text.is_empty() {
                            text.push(roman(". "));
                        }
                        if let Some(name) = header.get(i).filter(|h| !h.is_empty()) {
                            text.push(roman(format!("{}: ", plain(name))));
                        }
                        text.extend(inlines(cell));
                    }
                    if !text.is_empty() {
                        roff.text(text);
                    }
                }
                roff.control("PP", []);
            }
        }
    }
}

/// A heading in capitals, as man pages write section names, except for
/// code spans (a key or a command stays as it is typed).
fn upper_prose(text: &str) -> String {
    inlines(text)
        .into_iter()
        .map(|i| match i {
            Inline::Roman(t) | Inline::Italic(t) => t.to_uppercase(),
            Inline::Bold(t) => t,
            Inline::LineBreak => " ".to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roff_of(md: &str) -> String {
        let mut roff = Roff::new();
        render(&mut roff, &blocks(md));
        roff.to_roff()
    }

    #[test]
    fn blocks_of_each_kind() {
        let md = "# Title\n\nSome *text*\nwrapped.\n\n```toml\na = 1\n\nb = 2\n```\n\n## Part\n\n- one\n  more\n- two\n\n1. first\n2. second\n\n| Key | Type |\n|---|---|\n| `a` | int |\n";
        assert_eq!(
            blocks(md),
            vec![
                Block::Heading(1, "Title".into()),
                Block::Paragraph("Some *text* wrapped.".into()),
                Block::Code(vec!["a = 1".into(), "".into(), "b = 2".into()]),
                Block::Heading(2, "Part".into()),
                Block::List {
                    ordered: false,
                    loose: false,
                    items: vec!["one more".into(), "two".into()]
                },
                Block::List {
                    ordered: true,
                    loose: false,
                    items: vec!["first".into(), "second".into()]
                },
                Block::Table {
                    header: vec!["Key".into(), "Type".into()],
                    rows: vec![vec!["`a`".into(), "int".into()]]
                },
            ]
        );
    }

    #[test]
    fn a_loose_list_stays_one_list_and_a_paragraph_ends_it() {
        let md = "- a\n\n  still a\n- b\n\nafter\n";
        assert_eq!(
            blocks(md),
            vec![
                Block::List {
                    ordered: false,
                    loose: true,
                    items: vec!["a still a".into(), "b".into()]
                },
                Block::Paragraph("after".into()),
            ]
        );
    }

    #[test]
    fn inline_code_bold_italics_and_links() {
        assert_eq!(
            inlines("Use `min` and **max**, *or* [the rule](#rule) or [docs](https://x.org/a)."),
            vec![
                roman("Use "),
                bold("min"),
                roman(" and "),
                bold("max"),
                roman(", "),
                italic("or"),
                roman(" the rule or docs <"),
                roman("https://x.org/a"),
                roman(">."),
            ]
            .into_iter()
            .fold(Vec::new(), merge_roman)
        );
    }

    /// Adjacent roman runs as `inlines` joins them.
    fn merge_roman(mut acc: Vec<Inline>, i: Inline) -> Vec<Inline> {
        if let (Some(Inline::Roman(a)), Inline::Roman(b)) = (acc.last_mut(), &i) {
            a.push_str(b);
            return acc;
        }
        acc.push(i);
        acc
    }

    #[test]
    fn a_link_label_may_hold_brackets_in_code() {
        assert_eq!(
            inlines("[How `[defaults]` merges](#how-defaults-merges)"),
            vec![roman("How "), bold("[defaults]"), roman(" merges")]
        );
    }

    #[test]
    fn code_keeps_its_spaces_and_backticks_in_double_ticks() {
        assert_eq!(inlines("`a  b`"), vec![bold("a  b")]);
        assert_eq!(inlines("`` a`b ``"), vec![bold("a`b")]);
        assert_eq!(inlines("a   b\tc"), vec![roman("a b c")]);
    }

    #[test]
    fn unmatched_markers_are_text() {
        assert_eq!(inlines("a ** b"), vec![roman("a ** b")]);
        assert_eq!(inlines("`open"), vec![roman("`open")]);
        assert_eq!(inlines("[no link"), vec![roman("[no link")]);
        assert_eq!(inlines("2 * 3"), vec![roman("2 * 3")]);
    }

    #[test]
    fn roff_escapes_what_roff_would_read_as_requests() {
        let out = roff_of(".hidden request\n\n```\n.also\n\\back-slash\n```\n");
        assert!(out.contains("\\&.hidden request"), "{out}");
        assert!(out.contains("\\&.also"), "{out}");
        assert!(out.contains("\\\\back\\-slash"), "{out}");
    }

    #[test]
    fn headings_become_sections_in_capitals_but_code_keeps_its_case() {
        let out = roff_of("## Checking a file: `slotman check`\n\n### `min` and `max`\n");
        assert!(
            out.contains(".SH \"CHECKING A FILE: slotman check\""),
            "{out}"
        );
        assert!(out.contains(".SS \"min and max\""), "{out}");
    }

    #[test]
    fn a_table_row_becomes_a_term_and_its_other_cells() {
        let out = roff_of("| Key | Type | Default |\n|---|---|---|\n| `kind` | `\"exec\"` \\| `\"stdio\"` | — |\n");
        assert!(
            out.contains(".TP\n\\fBkind\\fR\nType: \\fB\"exec\"\\fR | \\fB\"stdio\"\\fR\n"),
            "{out}"
        );
    }

    proptest::proptest! {
        /// Whatever the text, rendering ends and every roff line that is
        /// not a request starts with text, never with a control character.
        #[test]
        fn any_text_renders_to_lines_that_are_not_requests(md in "[ -~\n\t|#*`\\[\\]()é-]{0,400}") {
            let out = roff_of(&md);
            for line in out.lines() {
                let request = line.starts_with('.') && line[1..].starts_with(|c: char| c.is_ascii_uppercase() || c == 'n' || c == 'f');
                proptest::prop_assert!(request || !line.starts_with('.') && !line.starts_with('\''), "{line:?} in {out}");
            }
        }
    }
}
