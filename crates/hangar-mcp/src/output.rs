//! Keeping tool output small enough for a model: head and tail kept, with a marker
//! saying how much was cut and how to read the rest.

/// Default bytes of each output stream a tool returns.
pub const DEFAULT_OUTPUT_CAP: usize = 16 * 1024;

/// `data` cut to at most `cap` bytes (half head, half tail) and the bytes cut.
/// `rest_hint` tells the reader how to get what was cut.
pub fn cap(data: &str, cap: usize, rest_hint: &str) -> (String, usize) {
    if data.len() <= cap {
        return (data.to_string(), 0);
    }
    let head_end = floor_char(data, cap / 2);
    let tail_start = ceil_char(data, data.len() - cap / 2);
    let cut = tail_start - head_end;
    (
        format!(
            "{}\n[... {cut} bytes cut; {rest_hint} ...]\n{}",
            &data[..head_end],
            &data[tail_start..]
        ),
        cut,
    )
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_output_is_untouched() {
        assert_eq!(cap("hello", 10, "x"), ("hello".to_string(), 0));
    }

    #[test]
    fn long_output_keeps_head_and_tail() {
        let data = format!("{}{}", "a".repeat(1000), "z".repeat(1000));
        let (out, cut) = cap(&data, 100, "poll the job");
        assert_eq!(cut, 1900);
        assert!(out.starts_with(&"a".repeat(50)));
        assert!(out.ends_with(&"z".repeat(50)));
        assert!(out.contains("[... 1900 bytes cut; poll the job ...]"));
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        let data = "é".repeat(100);
        let (out, _) = cap(&data, 11, "x");
        assert!(out.starts_with("éé"));
    }
}
