//! Spec errors that point at the file, line and field.

use std::fmt;

/// One problem in a workflow spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// The file the spec came from (`None` for a spec sent as JSON over the API).
    pub file: Option<String>,
    /// 1-based line and column, when known.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The field, as a path (`step "score".needs`).
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError {
            file: None,
            line: None,
            column: None,
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.as_deref().unwrap_or("<spec>");
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{file}:{l}:{c}: ")?,
            (Some(l), None) => write!(f, "{file}:{l}: ")?,
            _ => write!(f, "{file}: ")?,
        }
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for SpecError {}

/// Converts a byte offset into a 1-based (line, column).
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

/// Finds the line of `key` inside the `index`-th `[[step]]` table of a TOML source (or the top
/// level when `index` is `None`). Semantic errors use it to point at the line a person must edit.
pub fn locate_toml(source: &str, index: Option<usize>, key: &str) -> Option<usize> {
    let mut current: Option<usize> = None;
    let mut seen = 0usize;
    let mut in_other_table = false;
    let mut table_line = None;
    for (n, raw) in source.lines().enumerate() {
        let line = raw.trim_start();
        if line.starts_with("[[step]]") {
            current = Some(seen);
            seen += 1;
            in_other_table = false;
            if current == index {
                table_line = Some(n + 1);
            }
            continue;
        }
        if line.starts_with('[') {
            in_other_table = true;
            continue;
        }
        let here = current == index && (index.is_some() || !in_other_table);
        if here && !in_other_table {
            let after = line.strip_prefix(key).map(str::trim_start);
            if after.is_some_and(|r| r.starts_with('=') || r.starts_with('.')) {
                return Some(n + 1);
            }
        }
    }
    table_line
}
