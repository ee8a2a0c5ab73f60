use clap::CommandFactory;

use super::models::default_names;
use super::*;
use crate::model::{DeviceSpec, RecipeChoice};

/// Flags that override the settings file in the tests below.
const PORT_AND_KEY: [&str; 4] = ["--port", "9100", "--api-key", "s3cret"];

/// The settings the command line `args` gives (file and environment included).
fn resolve(args: &[&str]) -> anyhow::Result<Settings> {
    let matches = Cli::command().try_get_matches_from(args)?;
    match Invocation::resolve(&matches)? {
        Invocation::Serve(settings) => Ok(settings),
        _ => anyhow::bail!("no serve settings"),
    }
}

/// The settings `score` runs with for the command line `args`.
fn resolve_score(args: &[&str]) -> anyhow::Result<ScoringSettings> {
    let matches = Cli::command().try_get_matches_from(args)?;
    match Invocation::resolve(&matches)? {
        Invocation::Score(_, settings) => Ok(settings),
        _ => anyhow::bail!("no score settings"),
    }
}

#[test]
fn flags_override_the_file_which_overrides_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.toml");
    std::fs::write(
        &file,
        "port = 9000\nmax_batch_pairs = 8\nhost = \"127.0.0.1\"\ndevice = \"cpu\"\n",
    )
    .unwrap();
    let args = [
        &["zerank-server", "--config", file.to_str().unwrap()][..],
        &PORT_AND_KEY,
    ]
    .concat();
    let settings = resolve(&args).unwrap();
    assert_eq!(settings.server.port, 9100);
    assert_eq!(settings.scoring.max_batch_pairs, 8);
    assert_eq!(settings.server.host, "127.0.0.1");
    assert_eq!(settings.scoring.device, DeviceSpec::Cpu);
    assert_eq!(settings.scoring.max_batch_tokens, 16_384);
    assert_eq!(settings.scoring.model, vec![DEFAULT_MODEL.to_owned()]);
    assert!(!format!("{:?}", settings.redacted()).contains("s3cret"));
    // The subcommand reads the same settings.
    let scored = resolve_score(&[
        "zerank-server",
        "score",
        "--input",
        "-",
        "--config",
        file.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(scored.max_batch_pairs, 8);
}

#[test]
fn unknown_file_keys_and_bad_values_name_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.toml");
    let config = file.to_str().unwrap();
    for (text, needles) in [
        ("prot = 9000\n", &["`prot`"][..]),
        ("device = \"tpu\"\n", &["device: ", "tpu"]),
        (
            "max_batch_pairs = \"many\"\n",
            &["max_batch_pairs: ", "many"],
        ),
        ("host = \"h\"\nport = 70000\n", &["port: ", "70000", "u16"]),
    ] {
        std::fs::write(&file, text).unwrap();
        let err = resolve(&["zerank-server", "--config", config])
            .unwrap_err()
            .to_string();
        assert!(err.contains(config), "{err}");
        for needle in needles {
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
    }
}

#[test]
fn per_model_settings_take_one_value_or_one_per_model() {
    let settings = resolve(&[
        "zerank-server",
        "--model",
        "org/a,org/b",
        "--recipe",
        "zerank,qwen3-reranker",
        "--score-temperature",
        "2",
        "--served-model-names",
        "first,alias",
        "--served-model-names",
        "second",
    ])
    .unwrap();
    let models = settings.models().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0].load.recipe, RecipeChoice::Zerank);
    assert_eq!(models[1].load.recipe, RecipeChoice::Qwen3Reranker);
    assert_eq!(models[0].load.score_temperature, Some(2.0));
    assert_eq!(models[1].load.score_temperature, Some(2.0));
    assert_eq!(models[0].served_names, vec!["first", "alias"]);
    assert_eq!(models[1].served_names, vec!["second"]);
    // The environment's form: lists separated by `;`.
    let grouped = resolve(&[
        "zerank-server",
        "--model",
        "org/a,org/b",
        "--served-model-names",
        "first,alias;second",
    ])
    .unwrap();
    assert_eq!(grouped.models().unwrap()[1].served_names, vec!["second"]);

    let err = resolve(&[
        "zerank-server",
        "--model",
        "org/a,org/b",
        "--recipe",
        "zerank,zerank,zerank",
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("3 values for 2 models"), "{err}");
    let err = resolve(&["zerank-server", "--model", "a/x,b/x"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("`x`"), "{err}");
}

#[test]
fn default_names_hide_local_paths() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("my-reranker");
    std::fs::create_dir(&local).unwrap();
    assert_eq!(default_names(local.to_str().unwrap()), vec!["my-reranker"]);
    assert_eq!(
        default_names("zeroentropy/zerank-1-small"),
        vec!["zeroentropy/zerank-1-small", "zerank-1-small"]
    );
}

#[test]
fn absurd_settings_are_refused() {
    for flag in [
        "--request-timeout-secs",
        "--header-read-timeout-secs",
        "--body-read-timeout-secs",
        "--drain-deadline-secs",
        "--response-write-timeout-secs",
    ] {
        for bad in ["1e20", "0", "-1", "inf", "NaN", "1e-9", "0.05"] {
            let arg = format!("{flag}={bad}");
            let err = resolve(&["zerank-server", arg.as_str()])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&flag[2..].replace('-', "_")),
                "{flag} {bad}: {err}"
            );
        }
    }
    for (flag, bad) in [
        ("--max-connections", "0"),
        ("--max-batch-tokens", "99999999999"),
        ("--max-header-bytes", "0"),
        ("--max-length", "0"),
        ("--score-temperature", "0"),
    ] {
        assert!(
            resolve(&["zerank-server", flag, bad]).is_err(),
            "{flag} {bad}"
        );
    }
}

/// Values a server could not work with, each refused with an error that names the setting
/// and its range; the bounds themselves are accepted.
#[test]
fn settings_out_of_their_working_range_are_refused_by_name_and_range() {
    for (flag, bad, range, edge) in [
        (
            "--max-header-bytes",
            "10",
            "between 1024 and 1048576",
            "1024",
        ),
        (
            "--payload-limit-bytes",
            "100",
            "between 1024 and 1073741824",
            "268435456",
        ),
        (
            "--request-body-memory-bytes",
            "99999999999999",
            "between 1024 and 1099511627776",
            "8388608",
        ),
        (
            "--http2-max-concurrent-streams",
            "0",
            "between 1 and 1000",
            "1000",
        ),
        ("--max-queued-tokens", "1", "between 256 and", "256"),
        (
            "--request-timeout-secs",
            "1e-9",
            "between 0.1 and 86400",
            "0.1",
        ),
        (
            "--header-read-timeout-secs",
            "0.5",
            "between 1 and 86400",
            "1",
        ),
        (
            "--body-read-timeout-secs",
            "0.5",
            "between 1 and 86400",
            "86400",
        ),
        (
            "--response-write-timeout-secs",
            "0.5",
            "between 1 and 86400",
            "1",
        ),
        (
            "--max-tokens-per-doc",
            "99999999999",
            "between 1 and 16777216",
            "1",
        ),
        (
            "--score-cache-bytes",
            "99999999999999",
            "between 0 and",
            "0",
        ),
    ] {
        let err = resolve(&["zerank-server", flag, bad])
            .unwrap_err()
            .to_string();
        let name = flag[2..].replace('-', "_");
        assert!(
            err.contains(&name) && err.contains(range),
            "{flag} {bad}: {err}"
        );
        assert!(
            resolve(&["zerank-server", flag, edge]).is_ok(),
            "{flag} {edge}"
        );
    }
    // The body memory holds at least one body of the payload limit.
    let largest = ["zerank-server", "--payload-limit-bytes", "1073741824"];
    let err = resolve(&largest).unwrap_err().to_string();
    assert!(
        err.contains("request_body_memory_bytes (268435456) must hold at least one body"),
        "{err}"
    );
    let both = [&largest[..], &["--request-body-memory-bytes", "1073741824"]].concat();
    assert!(resolve(&both).is_ok());
    for bad in ["8080", "0"] {
        let err = resolve(&["zerank-server", "--admin-port", bad])
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin_port"), "{bad}: {err}");
    }
    let settings = resolve(&["zerank-server", "--admin-port", "9090"]).unwrap();
    assert_eq!(settings.server.admin_port, Some(9090));
}

#[test]
fn absurd_chunk_overlaps_are_refused_with_the_limit() {
    for bad in ["100000000", &u64::MAX.to_string()] {
        let err = resolve(&["zerank-server", "--chunk-overlap-tokens", bad])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("chunk_overlap_tokens must be at most 1048576") && err.contains(bad),
            "{bad}: {err}"
        );
    }
    assert!(resolve(&["zerank-server", "--chunk-overlap-tokens", "0"]).is_ok());
}

#[test]
fn an_empty_or_blank_api_key_refuses_to_start() {
    for key in ["", "   ", "\n"] {
        let err = resolve(&["zerank-server", "--api-key", key])
            .unwrap_err()
            .to_string();
        assert!(err.contains("api_key is empty"), "{key:?}: {err}");
    }
    let settings = resolve(&["zerank-server", "--api-key", "s3cret\n"]).unwrap();
    assert_eq!(settings.server.api_key.as_deref(), Some("s3cret"));
}

#[test]
fn boolean_settings_are_switches_too() {
    let bare = resolve(&[
        "zerank-server",
        "--protect-health-and-metrics",
        "--prefix-sharing",
    ])
    .unwrap();
    assert!(bare.server.protect_health_and_metrics && bare.scoring.prefix_sharing);
    let explicit = resolve(&["zerank-server", "--prefix-sharing=false"]).unwrap();
    assert!(!explicit.scoring.prefix_sharing);
    assert!(resolve(&["zerank-server"]).unwrap().server.docs_page);
    let off = resolve(&["zerank-server", "--docs-page", "false"]).unwrap();
    assert!(!off.server.docs_page);
}

#[test]
fn help_shows_the_declared_defaults() {
    let help = Cli::command().render_long_help().to_string();
    for default in [
        "[default: zeroentropy/zerank-1-small]",
        "[default: 8080]",
        "[default: 16384]",
        "[default: auto]",
        "[default: 60]",
    ] {
        assert!(help.contains(default), "{default} missing from --help");
    }
}

/// Every key of the shipped `config/default.toml` is a setting, with its declared default.
#[test]
fn the_shipped_config_file_holds_real_keys_and_their_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_FILE);
    let file: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
    let defaults = serde_json::to_value(Settings::default()).unwrap();
    let defaults = defaults.as_object().unwrap();
    for (key, value) in &file {
        let declared = defaults
            .get(key)
            .unwrap_or_else(|| panic!("config/default.toml: `{key}` is not a setting"));
        // Through the setting's own type, so that `auto` and 60.0 compare as written.
        let mut single = defaults.clone();
        single.insert(key.clone(), serde_json::to_value(value).unwrap());
        let parsed: Settings = serde_json::from_value(single.into()).unwrap();
        assert_eq!(
            &serde_json::to_value(parsed).unwrap()[key],
            declared,
            "config/default.toml: `{key}` is not its default"
        );
    }
    assert!(file.len() >= 20, "the shipped file documents the settings");
}

/// The start-up log's account: the file read (found or given), and each setting off its
/// default with its source; settings the file sets to their defaults are not listed.
#[test]
fn the_settings_file_read_and_each_non_default_source_are_named() {
    let found = resolve(&["zerank-server"]).unwrap();
    assert_eq!(
        found.config.as_deref(),
        Some(Path::new(DEFAULT_CONFIG_FILE))
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.toml");
    std::fs::write(&file, "max_batch_pairs = 8\nhost = \"0.0.0.0\"\n").unwrap();
    let args = [
        &["zerank-server", "--config", file.to_str().unwrap()][..],
        &PORT_AND_KEY,
    ]
    .concat();
    let matches = Cli::command().try_get_matches_from(args).unwrap();
    let Invocation::Serve(settings) = Invocation::resolve(&matches).unwrap() else {
        panic!("serve settings expected")
    };
    assert_eq!(settings.config.as_deref(), Some(file.as_path()));
    let file = file.display().to_string();
    let expected = [
        ("api_key", "\"<redacted>\"", "--api-key"),
        ("max_batch_pairs", "8", file.as_str()),
        ("port", "9100", "--port"),
    ];
    let mut listed = settings.non_defaults(&matches);
    listed.sort();
    let listed: Vec<(&str, &str, &str)> = listed
        .iter()
        .map(|(key, value, source)| (key.as_str(), value.as_str(), source.as_str()))
        .collect();
    assert_eq!(listed, expected);
}

/// The log names a setting's environment variable by its key: every variable follows it.
#[test]
fn every_environment_variable_is_zerank_and_the_key() {
    let command = Cli::command();
    let mut count = 0;
    for arg in command.get_arguments() {
        if let Some(variable) = arg.get_env() {
            assert_eq!(
                variable.to_str(),
                Some(&*environment_variable(arg.get_id().as_str()))
            );
            count += 1;
        }
    }
    assert!(count > 30, "{count} settings with a variable");
}

#[test]
fn listening_beyond_loopback_without_a_key_is_warned_about() {
    let with = |host: &str, api_key: Option<&str>| ServerSettings {
        host: host.into(),
        api_key: api_key.map(Into::into),
        ..ServerSettings::default()
    };
    let warning = with("0.0.0.0", None).open_listener_warning().unwrap();
    assert!(
        warning.contains("0.0.0.0") && warning.contains("--api-key"),
        "{warning}"
    );
    assert!(with("10.1.2.3", None).open_listener_warning().is_some());
    for quiet in [
        with("0.0.0.0", Some("k")),
        with("127.0.0.1", None),
        with("::1", None),
        with("localhost", None),
    ] {
        assert_eq!(quiet.open_listener_warning(), None, "{}", quiet.host);
    }
}
