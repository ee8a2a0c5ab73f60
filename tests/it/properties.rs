//! Properties over hostile input: request parsing, validation and prompt building never
//! panic, and prompts keep the template's shape whatever the text.

use crate::common;

use std::sync::OnceLock;

use common::{fixture, load};
use proptest::prelude::*;
use zerank_server::http::types::{OneOrMany, RerankRequest, ScoreRequest};
use zerank_server::model::{Engine, TokenLimits, TruncationDirection};

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| load(&fixture("tiny")))
}

/// A Sentence Transformers native checkpoint: verbatim text, joined tokenization.
fn native_engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| load(&fixture("native-yes-no")))
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
            if let Ok(request) = serde_json::from_str::<RerankRequest>(&text)
                && let Ok(texts) = request.document_texts()
            {
                prop_assert!(request.documents.is_none() || request.texts.is_none());
                let given = request.documents.as_ref().map(Vec::len).or(request.texts.as_ref().map(Vec::len));
                prop_assert_eq!(Some(texts.len()), given);
            }
            if let Ok(request) = serde_json::from_str::<ScoreRequest>(&text) {
                let count = |t: &OneOrMany| match t { OneOrMany::One(_) => 1, OneOrMany::Many(v) => v.len() };
                let (n, m) = (count(&request.text_1), count(&request.text_2));
                if let Ok(pairs) = ScoreRequest::pairs(request.text_1, request.text_2) {
                    prop_assert_eq!(pairs.len(), n.max(m));
                } else {
                    prop_assert!(n == 0 || m == 0 || (n != m && n != 1 && m != 1));
                }
            }
        }
    }

    #[test]
    fn prompts_keep_the_template_shape(
        query in "\\PC{0,40}|[<|>a-z_ \n\t]{0,40}",
        document in "\\PC{0,80}|(<\\|im_(start|end)\\|>|\\s|[a-z])*",
        max_tokens_per_doc in prop::option::of(0usize..20),
        left in any::<bool>(),
    ) {
        let direction = if left { TruncationDirection::Left } else { TruncationDirection::Right };
        let limits = TokenLimits { max_tokens_per_doc, direction };
        // Markers in user text stay text on every layout.
        {
            let native = native_engine();
            let encoded = native.encoder().encode(&query, &document, None, limits).unwrap();
            prop_assert_eq!(encoded.ids.iter().filter(|&&t| t == 151_644).count(), 3);
            prop_assert_eq!(encoded.ids.iter().filter(|&&t| t == 151_645).count(), 2);
            let empty = native.encoder().encode("", "", None, TokenLimits::default()).unwrap().ids;
            prop_assert_eq!(&encoded.ids[encoded.ids.len() - 9..], &empty[empty.len() - 9..]);
        }
        let engine = engine();
        let encoded = engine.encoder().encode(&query, &document, None, limits).unwrap();
        let empty = engine.encoder().encode("", "", None, TokenLimits::default()).unwrap().ids;
        // The empty prompt is the template alone: head, middle and tail surround the texts.
        prop_assert!(encoded.ids.len() >= empty.len());
        prop_assert_eq!(&encoded.ids[..3], &empty[..3]);
        prop_assert_eq!(&encoded.ids[encoded.ids.len() - 5..], &empty[empty.len() - 5..]);
        // Exactly the template's three turn openings and two closings, whatever the text.
        prop_assert_eq!(encoded.ids.iter().filter(|&&t| t == 151_644).count(), 3);
        prop_assert_eq!(encoded.ids.iter().filter(|&&t| t == 151_645).count(), 2);
        if let Some(n) = max_tokens_per_doc {
            let full = engine.encoder().encode(&query, &document, None, TokenLimits::default()).unwrap();
            prop_assert!(full.ids.len() - encoded.ids.len() == encoded.truncated_tokens);
            let document_tokens = engine.encoder().encode("", &document, None, TokenLimits::default()).unwrap().ids.len() - empty.len();
            prop_assert_eq!(encoded.truncated_tokens, document_tokens.saturating_sub(n));
        }
    }
}
