//! Shortened lists in messages: a leaf the engine (a halted wave's reason) and the reporters
//! both use, so that the engine formats no report text of its own.

/// `, … and N more (--json lists all)` after a shortened list; empty when nothing was left out.
pub fn and_more(more: usize) -> String {
    if more > 0 {
        format!(", … and {more} more (--json lists all)")
    } else {
        String::new()
    }
}
