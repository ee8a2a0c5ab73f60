//! Properties over hostile input: request parsing, validation and prompt building never
//! panic, and prompts keep the template's shape whatever the text.

mod common;

use std::sync::OnceLock;

use common::{fixture, load};
use proptest::prelude::*;
use zerank_server::http::types::{RerankRequest, ScoreRequest};
use zerank_server::model::{Engine, TokenLimits, TruncationDirection};

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| load(&fixture("tiny")))
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        ".{0,20}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::hash_map(
                prop_oneof![
                    Just("query".to_owned()),
                    Just("documents".to_owned()),
                    Just("texts".to_owned()),
                    Just("top_n".to_owned()),
                    Just("text".to_owned()),
                    Just("text_1".to_owned()),
                    Just("text_2".to_owned()),
                    Just("truncation_direction".to_owned()),
                    ".{0,8}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn request_parsing_and_validation_never_panic(value in json_value(), raw in ".{0,64}") {
        for text in [value.to_string(), raw] {
            if let Ok(request) = serde_json::from_str::<RerankRequest>(&text) {
                let _ = request.document_texts();
            }
            if let Ok(request) = serde_json::from_str::<ScoreRequest>(&text) {
                let _ = request.pairs();
            }
        }
    }

    #[test]
    fn prompts_keep_the_template_shape(
        query in "\\PC{0,40}|[<|>a-z_ \n\t]{0,40}",
        document in "\\PC{0,80}|(<\\|im_(start|end)\\|>|\\s|[a-z])*",
        max_document_tokens in prop::option::of(0usize..20),
        left in any::<bool>(),
    ) {
        let engine = engine();
        let direction = if left { TruncationDirection::Left } else { TruncationDirection::Right };
        let limits = TokenLimits { max_document_tokens, direction };
        let encoded = engine.encode(&query, &document, limits).unwrap();
        let empty = engine.encode("", "", TokenLimits::default()).unwrap().ids;
        // The empty prompt is the template alone: head, middle and tail surround the texts.
        prop_assert!(encoded.ids.len() >= empty.len());
        prop_assert_eq!(&encoded.ids[..3], &empty[..3]);
        prop_assert_eq!(&encoded.ids[encoded.ids.len() - 5..], &empty[empty.len() - 5..]);
        // Exactly the template's three turn openings and two closings, whatever the text.
        prop_assert_eq!(encoded.ids.iter().filter(|&&t| t == 151_644).count(), 3);
        prop_assert_eq!(encoded.ids.iter().filter(|&&t| t == 151_645).count(), 2);
        if let Some(n) = max_document_tokens {
            let full = engine.encode(&query, &document, TokenLimits::default()).unwrap();
            prop_assert!(full.ids.len() - encoded.ids.len() == encoded.truncated_tokens);
            let document_tokens = engine.encode("", &document, TokenLimits::default()).unwrap().ids.len() - empty.len();
            prop_assert_eq!(encoded.truncated_tokens, document_tokens.saturating_sub(n));
        }
    }
}
