//! A tiny aligned-column table and the human units `shoalctl` prints
//! (sizes in KiB/MiB/GiB, durations, shortened digests).
//!
//! Widths count `char`s, which is right for the ASCII and `…` this CLI
//! prints; it does not measure East Asian wide characters. Cells are
//! sanitised: control characters a peer might put in its hostname are
//! replaced, so that a table cannot drive the operator's terminal.

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers: padded on the left.
    Right,
}

/// Columns with headers, rendered with three spaces between columns and no
/// trailing whitespace.
#[derive(Debug)]
pub(crate) struct Table {
    headers: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

const GAP: &str = "   ";

impl Table {
    /// A table with these column headers.
    pub(crate) fn new(headers: &[(&'static str, Align)]) -> Self {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are blank, extra cells are dropped).
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        let mut cells: Vec<String> = cells.into_iter().map(|c| sanitize(&c)).collect();
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as lines of text, each ending in `\n`.
    pub(crate) fn render(&self) -> String {
        let mut widths: Vec<usize> = self
            .headers
            .iter()
            .map(|(h, _)| h.chars().count())
            .collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|(h, _)| (*h).to_owned()).collect();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i > 0 {
                    line.push_str(GAP);
                }
                let pad = " ".repeat(widths[i] - cell.chars().count());
                match self.headers[i].1 {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&pad);
                    }
                    Align::Right => {
                        line.push_str(&pad);
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Replaces control characters (escape sequences, newlines, tabs) with `?`.
pub(crate) fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// `1.5 GiB`, `512 B`: binary units, one decimal above bytes.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `45s`, `3m12s`, `2h05m`, `3d04h`: the two largest units.
pub(crate) fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// `sha256:abcdef012345…` for list views (12 hex characters, as `docker images`).
pub(crate) fn short_digest(digest: &str) -> String {
    const KEEP: usize = "sha256:".len() + 12;
    match digest.char_indices().nth(KEEP) {
        Some((i, _)) => format!("{}…", &digest[..i]),
        None => digest.to_owned(),
    }
}

/// `yes` / `no`.
pub(crate) fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

/// A list of names, or `-` when empty.
pub(crate) fn list_or_dash(names: &[String]) -> String {
    if names.is_empty() {
        "-".to_owned()
    } else {
        names.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns_without_trailing_spaces() {
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("SIZE", Align::Right),
            ("NOTE", Align::Left),
        ]);
        t.row(vec!["a".into(), "1 B".into(), String::new()]);
        t.row(vec!["longer-name".into(), "10.0 MiB".into(), "x".into()]);
        assert_eq!(
            t.render(),
            "NAME              SIZE   NOTE\n\
             a                  1 B\n\
             longer-name   10.0 MiB   x\n"
        );
    }

    #[test]
    fn counts_chars_not_bytes_and_sanitises() {
        let mut t = Table::new(&[("D", Align::Left), ("E", Align::Left)]);
        t.row(vec!["ab…".into(), "1".into()]);
        t.row(vec!["abcd".into(), "2".into()]);
        t.row(vec!["\x1b[31m".into()]);
        assert_eq!(t.render(), "D       E\nab…     1\nabcd    2\n?[31m\n");
    }

    #[test]
    fn human_units() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size((8 << 20) + 12345), "8.0 MiB");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
        assert_eq!(human_size(u64::MAX), "16.0 EiB");
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(192), "3m12s");
        assert_eq!(human_duration(7500), "2h05m");
        assert_eq!(human_duration(273_600), "3d04h");
    }

    #[test]
    fn shortens_digests() {
        let d = format!("sha256:{}", "0123456789ab".repeat(5) + "cdef");
        assert_eq!(short_digest(&d), "sha256:0123456789ab…");
        assert_eq!(short_digest("sha256:ab"), "sha256:ab");
        assert_eq!(list_or_dash(&[]), "-");
        assert_eq!(list_or_dash(&["a".into(), "b".into()]), "a,b");
    }
}
