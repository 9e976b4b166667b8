//! Feeds arbitrary bytes to the startup packet parser, the first code that
//! sees what an unauthenticated client sends, and checks that whatever it
//! accepts is well formed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgwake_protocol::startup::{packet_len, parse, parse_options, MAX_STARTUP_LEN};
use pgwake_protocol::StartupRequest;

fuzz_target!(|data: &[u8]| {
    // The length check runs before anything is buffered for the packet, so
    // whatever it accepts must lie within PostgreSQL's limits.
    match packet_len(data) {
        Ok(Some(len)) => assert!((8..=MAX_STARTUP_LEN).contains(&len)),
        Ok(None) => assert!(data.len() < 4),
        Err(_) => {}
    }

    if let Ok(request) = parse(data) {
        // A packet is only accepted whole: its length field matches its size.
        assert_eq!(packet_len(data), Ok(Some(data.len())));
        match request {
            StartupRequest::Ssl | StartupRequest::GssEnc => assert_eq!(data.len(), 8),
            StartupRequest::Cancel { .. } => assert_eq!(data.len(), 16),
            StartupRequest::Startup { params, .. } => {
                // Parameters are forwarded to servers and written into
                // NUL-terminated fields; an embedded NUL would let a client
                // smuggle in extra parameters.
                for (key, value) in params.iter() {
                    assert!(!key.is_empty() && !key.contains('\0') && !value.contains('\0'));
                    assert!(!key.starts_with("_pq_."));
                    assert!(params.get(key).is_some());
                    if key == "options" {
                        check_options(value);
                    }
                }
                for option in params.protocol_options() {
                    assert!(option.starts_with("_pq_.") && !option.contains('\0'));
                }
            }
        }
    }

    if let Ok(text) = std::str::from_utf8(data) {
        check_options(text);
    }
});

fn check_options(text: &str) {
    if let Ok(settings) = parse_options(text) {
        for (name, _) in settings {
            // Names are normalised the way the server does it.
            assert!(!name.contains('-'), "{name:?}");
        }
    }
}
