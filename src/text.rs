//! Text the operator puts in front of people: conditions, events and
//! interruptions quote other programs' words, within a size.

/// The last `n` characters of `s`, trimmed, on a char boundary: the end of
/// a message is where a trainer's error usually is.
pub fn tail(s: &str, n: usize) -> String {
    let s = s.trim();
    let start = s
        .char_indices()
        .rev()
        .nth(n.saturating_sub(1))
        .map(|(i, _)| i)
        .unwrap_or(0);
    s[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail("héllo wörld", 5), "wörld");
        assert_eq!(tail("ab", 10), "ab");
    }
}
