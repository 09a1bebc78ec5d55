//! Bounding text that goes back to clients. Anything a client sent and an
//! error message quotes (a name, a value serde could not read) is clipped,
//! so a 4 MB request cannot make a 4 MB error, and every message as a whole
//! has a ceiling too. A leaf module: every layer may use it.

/// Client-supplied text quoted in a message, at most.
pub(crate) const CLIENT_TEXT_CHARS: usize = 200;
/// A whole error message, at most.
pub(crate) const MESSAGE_CHARS: usize = 1024;

/// `s` cut to `max` characters, with `…` when something was cut.
pub(crate) fn clip_to(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Client-supplied text, as quoted in a message.
pub(crate) fn clip(s: &str) -> String {
    clip_to(s, CLIENT_TEXT_CHARS)
}

/// A whole message, as sent.
pub(crate) fn clip_message(s: &str) -> String {
    clip_to(s, MESSAGE_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_counts_characters_not_bytes() {
        assert_eq!(clip_to("abc", 3), "abc");
        assert_eq!(clip_to("abcd", 3), "abc…");
        assert_eq!(clip_to("ééé", 2), "éé…");
        assert_eq!(
            clip(&"x".repeat(10_000)).chars().count(),
            CLIENT_TEXT_CHARS + 1
        );
    }
}
