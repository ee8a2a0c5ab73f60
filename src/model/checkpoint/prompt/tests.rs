use super::*;

#[test]
fn cuts_count_characters_and_strip_python_whitespace() {
    assert_eq!(cut_and_strip("  héllo  ", 100), "héllo");
    assert_eq!(cut_and_strip("ééééé", 3), "ééé");
    assert_eq!(cut_and_strip("ab   cd", 4), "ab");
    assert_eq!(
        cut_and_strip("\u{1c}\u{a0}\u{3000}x\u{85}\u{2029}", 100),
        "x"
    );
    assert_eq!(cut_and_strip("🙂🙂", 1), "🙂");
    assert_eq!(cut_and_strip("", 10), "");
    // Zero-width space is not whitespace to Python either.
    assert_eq!(cut_and_strip("\u{200b}x", 10), "\u{200b}x");
}
