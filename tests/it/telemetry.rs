//! Trace export settings, refused at start when they cannot work (the export itself:
//! tests/otlp_export.rs).

use crate::common;

#[test]
fn an_endpoint_that_is_not_an_http_url_is_refused_at_start() {
    for endpoint in ["collector:4318", "https://collector:4318", "ftp://x"] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_zerank-server"))
            .args(["--model", &common::server::fixture_path("tiny")])
            .args(["--otlp-endpoint", endpoint])
            .output()
            .unwrap();
        assert!(!output.status.success(), "{endpoint}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("otlp_endpoint"), "{endpoint}: {stderr}");
    }
}

#[cfg(not(feature = "otlp"))]
#[test]
fn a_binary_without_the_otlp_feature_refuses_an_endpoint_naming_the_feature() {
    // A folder with no checkpoint in it: a binary that let the endpoint pass would fail at
    // load rather than serve on.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_zerank-server"))
        .arg("--model")
        .arg(common::fixture(""))
        .args(["--port", "0", "--otlp-endpoint", "http://127.0.0.1:4318"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--features otlp"), "{stderr}");
}
