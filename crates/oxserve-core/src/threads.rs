//! Threads named after what they serve.

/// A thread builder named `name`, with any NUL byte replaced: names come from model names and
/// config files, where NUL is a legal character, and `std::thread` panics on a name holding one.
pub(crate) fn named(name: String) -> std::thread::Builder {
    std::thread::Builder::new().name(name.replace('\0', "?"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_nul_byte_in_the_name_is_replaced() {
        let thread = super::named("model-a\0b".into())
            .spawn(|| std::thread::current().name().map(str::to_string))
            .unwrap();
        assert_eq!(thread.join().unwrap().as_deref(), Some("model-a?b"));
    }
}
