//! Comparing two frames: a layer-by-layer, field-by-field report of what
//! differs, then a side-by-side hex dump at the first differing byte.
use std::fmt::Write as _;

use super::dissect::{dissect, hex, Dissected};

/// `None` when the frames are identical; otherwise a report of every
/// differing field, missing or extra layer, and the bytes around the first
/// difference.
pub fn diff(expected: &[u8], actual: &[u8]) -> Option<String> {
    if expected == actual {
        return None;
    }
    let (e, a) = (dissect(expected), dissect(actual));
    let mut r = format!(
        "frames differ (expected {} bytes, actual {} bytes)\n",
        expected.len(),
        actual.len()
    );
    for i in 0..e.len().max(a.len()) {
        match (e.get(i), a.get(i)) {
            (Some(el), Some(al)) if el.name == al.name => fields(&mut r, i, el, al),
            (Some(el), Some(al)) => {
                let _ = writeln!(r, "  layer {i}: expected {}, actual {}", el.name, al.name);
                let _ = writeln!(r, "    expected: {el}\n    actual:   {al}");
            }
            (Some(el), None) => {
                let _ = writeln!(r, "  layer {i} missing from actual: {el}");
            }
            (None, Some(al)) => {
                let _ = writeln!(r, "  layer {i} only in actual: {al}");
            }
            (None, None) => unreachable!(),
        }
    }
    let first = expected.iter().zip(actual).position(|(x, y)| x != y);
    let at = first.unwrap_or(expected.len().min(actual.len()));
    let _ = writeln!(r, "  first difference at byte {at}:");
    dump(&mut r, "expected", expected, at);
    dump(&mut r, "actual", actual, at);
    Some(r)
}

fn fields(r: &mut String, i: usize, e: &Dissected, a: &Dissected) {
    for ef in &e.fields {
        match a.field(ef.name) {
            Some(af) if af.value == ef.value => {}
            Some(af) => {
                let _ = writeln!(
                    r,
                    "  [{i}] {}.{} @{}: expected {}, actual {}",
                    e.name, ef.name, ef.offset, ef.value, af.value
                );
            }
            None => {
                let _ =
                    writeln!(r, "  [{i}] {}.{}: expected {}, absent", e.name, ef.name, ef.value);
            }
        }
    }
    for af in a.fields.iter().filter(|af| e.field(af.name).is_none()) {
        let _ = writeln!(r, "  [{i}] {}.{}: unexpected {}", a.name, af.name, af.value);
    }
}

/// Rows of 16 bytes from the row before `at` to two rows after it.
fn dump(r: &mut String, label: &str, b: &[u8], at: usize) {
    let start = (at / 16).saturating_sub(1) * 16;
    let end = ((at / 16 + 3) * 16).min(b.len());
    let _ = writeln!(r, "    {label}:");
    for row in (start..end).step_by(16) {
        let bytes = &b[row..(row + 16).min(b.len())];
        let mark = if (row..row + 16).contains(&at) { '>' } else { ' ' };
        let _ = writeln!(r, "    {mark}{row:04x}: {}", spaced(bytes));
    }
    if start >= end {
        let _ = writeln!(r, "     (ends at byte {})", b.len());
    }
}

fn spaced(b: &[u8]) -> String {
    b.chunks(2).map(hex).collect::<Vec<_>>().join(" ")
}
