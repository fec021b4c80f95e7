//! What a caught panic said: the store's readers, its checkpointer and the control loops
//! catch panics (sled's on damaged files, a bug in one reconcile) and log them as failures.

/// The message of a caught panic payload.
pub fn message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message")
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_of_both_payload_kinds() {
        let owned = std::panic::catch_unwind(|| panic!("{}", String::from("owned"))).unwrap_err();
        assert_eq!(super::message(&*owned), "owned");
        let fixed = std::panic::catch_unwind(|| panic!("fixed")).unwrap_err();
        assert_eq!(super::message(&*fixed), "fixed");
    }
}
