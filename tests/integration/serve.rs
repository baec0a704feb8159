//! `bitnet serve` and `bitnet classify` on stdin: a tiny untrained model exported the way
//! `bitnet export` writes it, loaded back with a run config as `--export FILE --config CONFIG`
//! loads it, served on 127.0.0.1 port 0; and a hand-made model to hold the queue full.
//!
//! An untrained model rarely writes valid JSON, so its answers mostly abstain: these tests check
//! the contract (fields, ranges, batch = single, errors), not accuracy.

use bitnet_cli::commands::classify::{MAX_LINE_BYTES, classify_lines};
use bitnet_cli::commands::inference::InferenceSource;
use bitnet_cli::commands::serve::pool::Decoding;
use bitnet_cli::commands::serve::{ServeOptions, Server};
use bitnet_framework::BuildContext;
use bitnet_framework::model::{InferenceModel, KernelError};
use bitnet_framework::tokenizer::Tokenizer;
use bitnet_runtime::config::{ComponentSpec, RunConfig};
use bitnet_runtime::data::dir::DataDir;
use bitnet_runtime::run;
use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

const SEQ_LEN: usize = 64;

/// A run config, its data dir with a trained word-level tokenizer, and an export of a tiny
/// randomly initialised model.
struct Fixture {
    _tmp: tempfile::TempDir,
    config: PathBuf,
    export: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = bitnet_tests::temp_dir();
    let data = DataDir::new(tmp.path().join("data"));
    std::fs::create_dir_all(data.root()).expect("data dir");
    let corpus = bitnet_truckmate::corpus::generate(300, 5);
    let registry = bitnet_plugins::registry().expect("registry");
    let ctx = BuildContext::new(bitnet_tests::tiny_model(64));
    let mut tok =
        registry.build::<dyn Tokenizer>("word-level", &toml::Table::new(), &ctx).expect("tok");
    tok.train(&mut corpus.train.iter().cloned()).expect("train tokenizer");
    tok.save(&data.tokenizer_file("word-level")).expect("save tokenizer");

    let mut config =
        RunConfig { model: bitnet_tests::tiny_model(tok.vocab_size()), ..RunConfig::default() };
    config.model.seq_len = SEQ_LEN;
    config.kernel = ComponentSpec::named("bitnet-b158");
    config.tokenizer = ComponentSpec::named("word-level");
    config.data.dir = data.root().to_path_buf();
    let kernel = run::build_kernel(&config, &registry).expect("kernel");
    let mut params = vec![0.0; kernel.layout().total_params()];
    kernel.init_params(7, &mut params).expect("init");
    let export = tmp.path().join("model.bin");
    std::fs::write(&export, kernel.export_inference(&params).expect("export")).expect("write");
    let path = tmp.path().join("run.toml");
    std::fs::write(&path, toml::to_string(&config).expect("toml")).expect("write config");
    Fixture { _tmp: tmp, config: path, export }
}

fn post(client: &Client, url: &str, body: &Value) -> (StatusCode, Value) {
    let r = client.post(url).json(body).send().expect("request");
    let status = r.status();
    (status, r.json().expect("a JSON body"))
}

fn assert_answer(a: &Value) {
    assert!(a["intent"].is_string(), "{a}");
    assert!(a["slots"].is_object(), "{a}");
    let c = a["confidence"].as_f64().expect("confidence");
    assert!((0.0..=1.0).contains(&c), "{a}");
    assert!(a["abstained"].is_boolean(), "{a}");
    if a["abstained"] == json!(true) {
        assert_eq!((&a["intent"], &a["slots"]), (&json!("none"), &json!({})), "{a}");
    }
}

#[test]
fn serve_answers_single_and_batch_requests_and_refuses_bad_input() {
    let f = fixture();
    let source = InferenceSource::from_export(&f.export, &f.config, None).expect("load export");
    assert_eq!(source.seq_len, SEQ_LEN);
    let options = ServeOptions {
        threads: 2,
        queue: 8,
        max_batch: 4,
        max_body_bytes: 4096,
        ..ServeOptions::default()
    };
    let server = Server::start(&source, "127.0.0.1:0", &options).expect("start");
    let base = format!("http://{}", server.addr());
    let client = Client::new();

    let health = client.get(format!("{base}/health")).send().expect("health");
    assert_eq!(health.status(), StatusCode::OK);
    let health: Value = health.json().expect("json");
    assert_eq!((health["status"].as_str(), health["models"].as_u64()), (Some("ok"), Some(2)));

    let utterances = ["take me to dallas texas", "where is the nearest weigh station", "uh eta"];
    let single: Vec<Value> = utterances
        .iter()
        .map(|u| {
            let (status, a) = post(&client, &format!("{base}/v1/intent"), &json!({"utterance": u}));
            assert_eq!(status, StatusCode::OK, "{a}");
            assert_answer(&a);
            a
        })
        .collect();
    let (status, batch) =
        post(&client, &format!("{base}/v1/intents"), &json!({"utterances": utterances}));
    assert_eq!(status, StatusCode::OK, "{batch}");
    assert_eq!(batch["answers"].as_array().expect("answers"), &single, "batch = single");

    let intent = format!("{base}/v1/intent");
    let refused = [
        (json!({"utterance": "  "}), StatusCode::UNPROCESSABLE_ENTITY, "empty"),
        (json!({"utterance": "a ".repeat(600)}), StatusCode::UNPROCESSABLE_ENTITY, "characters"),
        (json!({"utterance": "to ".repeat(40)}), StatusCode::UNPROCESSABLE_ENTITY, "tokens"),
        (json!({"utterance": "x", "extra": 1}), StatusCode::UNPROCESSABLE_ENTITY, "extra"),
        (json!({"text": "x"}), StatusCode::UNPROCESSABLE_ENTITY, "utterance"),
        (json!({"utterance": 3}), StatusCode::UNPROCESSABLE_ENTITY, "string"),
        (json!({"utterance": "x".repeat(5000)}), StatusCode::PAYLOAD_TOO_LARGE, "length limit"),
    ];
    for (body, want, says) in refused {
        let (status, e) = post(&client, &intent, &body);
        assert_eq!(status, want, "{e}");
        let message = e["error"].as_str().expect("error message");
        assert!(message.contains(says), "{message:?} should mention {says:?}");
    }
    let batches = format!("{base}/v1/intents");
    for (body, says) in [
        (json!({"utterances": ["a", "b", "c", "d", "e"]}), "1 to 4"),
        (json!({"utterances": []}), "1 to 4"),
        (json!({"utterances": ["fine", ""]}), "utterance 1 is empty"),
    ] {
        let (status, e) = post(&client, &batches, &body);
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        assert!(e["error"].as_str().is_some_and(|m| m.contains(says)), "{e}");
    }
    let raw = |body: &'static str, json_type: bool| {
        let mut r = client.post(&intent).body(body);
        if json_type {
            r = r.header("content-type", "application/json");
        }
        let r = r.send().expect("request");
        (r.status(), r.json::<Value>().expect("JSON error body"))
    };
    assert_eq!(raw("not json", true).0, StatusCode::BAD_REQUEST);
    assert_eq!(raw(r#"{"utterance": "x"}"#, false).0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let missing = client.get(format!("{base}/v2/nothing")).send().expect("request");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    server.stop();
}

/// Utterances decoded together answer what each answers alone, in the library
/// (`classify_batch`, with an empty and a too-long utterance among them) and through a server
/// whose one model takes concurrent requests in waves.
#[test]
fn utterances_decoded_together_answer_what_each_answers_alone() {
    use bitnet_truckmate::answer::{classify, classify_batch};
    let f = fixture();
    let source = InferenceSource::from_export(&f.export, &f.config, None).expect("load export");
    let tok = source.tokenizer.as_ref();
    let long = "to ".repeat(40);
    let utterances = [
        "take me to dallas texas",
        "",
        "where is the nearest weigh station",
        long.as_str(),
        "uh eta",
        "find me a truck stop with showers",
        "how many hours do i have left on my clock",
        "reroute around the traffic",
    ];
    let mut alone_model = source.models(1).expect("model").remove(0);
    let alone: Vec<String> = utterances
        .iter()
        .map(|u| format!("{:?}", classify(alone_model.as_mut(), tok, u, SEQ_LEN, 0.5)))
        .collect();
    let mut together_model = source.models(1).expect("model").remove(0);
    let together: Vec<String> =
        classify_batch(together_model.as_mut(), tok, &utterances, SEQ_LEN, 0.5)
            .iter()
            .map(|a| format!("{a:?}"))
            .collect();
    assert_eq!(together, alone);
    assert!(alone[1].starts_with("Ok(") && alone[3].starts_with("Err("), "{alone:?}");
    // An untrained model's answers mostly abstain alike; its decodes (tokens and their
    // probabilities) differ from one utterance to the next, and must match too.
    use bitnet_truckmate::confidence::{decode_prompts, decode_with_probabilities};
    use bitnet_truckmate::eval::{clean_utterance, prompt_ids};
    let cleaned: Vec<String> =
        [0, 2, 4, 5, 6, 7].iter().map(|&i| clean_utterance(utterances[i])).collect();
    let prompts: Vec<Vec<u32>> =
        cleaned.iter().map(|u| prompt_ids(tok, u).expect("prompt")).collect();
    let together = decode_prompts(together_model.as_mut(), tok, prompts, SEQ_LEN).expect("decode");
    let mut distinct = std::collections::HashSet::new();
    for (u, got) in cleaned.iter().zip(together) {
        let got = got.expect("decoded");
        let want = decode_with_probabilities(alone_model.as_mut(), tok, u, SEQ_LEN).expect("alone");
        assert_eq!(got, want, "{u:?}");
        distinct.insert(format!("{:?}", got.probabilities));
    }
    assert!(distinct.len() > 1, "the decodes should differ between utterances");

    // Eight clients at once on one model that decodes up to eight together.
    let options = ServeOptions { threads: 1, decode_batch: 8, ..ServeOptions::default() };
    let server = Server::start(&source, "127.0.0.1:0", &options).expect("start");
    let url = format!("http://{}/v1/intent", server.addr());
    let ok: Vec<&str> =
        utterances.iter().copied().filter(|u| !u.is_empty() && u.len() < 50).collect();
    let served: Vec<Vec<Value>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|c| {
                let (url, ok) = (&url, &ok);
                scope.spawn(move || {
                    let client = Client::new();
                    (0..6)
                        .map(|r| {
                            let u = ok[(c + r) % ok.len()];
                            let (status, a) = post(&client, url, &json!({ "utterance": u }));
                            assert_eq!(status, StatusCode::OK, "{a}");
                            a
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("client")).collect()
    });
    let client = Client::new();
    let single: Vec<Value> =
        ok.iter().map(|u| post(&client, &url, &json!({ "utterance": u })).1).collect();
    for (c, answers) in served.iter().enumerate() {
        for (r, a) in answers.iter().enumerate() {
            assert_eq!(a, &single[(c + r) % ok.len()], "client {c}, request {r}");
        }
    }
    server.stop();
}

/// Writes `{"intent":"navigate","slots":{}}` then `[EOS]`, each token with probability 1, after
/// waiting for the gate to open.
struct Gated {
    answer: Vec<u32>,
    intent_marker: u32,
    eos: u32,
    vocab: usize,
    gate: Arc<(Mutex<bool>, Condvar)>,
    /// A token the model fails on.
    poison: Option<u32>,
}

impl Gated {
    /// Writes the navigate answer for every utterance, shut until its gate opens; fails on the
    /// word `poison`.
    fn new(tok: &dyn Tokenizer, poison: Option<&str>) -> Self {
        Gated {
            answer: tok.encode(r#"{"intent":"navigate","slots":{}}"#).expect("encode"),
            intent_marker: tok.special_tokens().intent,
            eos: tok.special_tokens().eos,
            vocab: tok.vocab_size(),
            gate: Arc::new((Mutex::new(false), Condvar::new())),
            poison: poison.map(|w| tok.encode(w).expect("encode")[0]),
        }
    }
}

impl InferenceModel for Gated {
    fn next_token_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>, KernelError> {
        let (open, cv) = &*self.gate;
        let mut g = open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while !*g {
            g = cv.wait(g).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if self.poison.is_some_and(|p| tokens.contains(&p)) {
            return Err(KernelError::Other("poisoned".into()));
        }
        let marker = tokens.iter().rposition(|&t| t == self.intent_marker).expect("[INTENT]");
        let next = self.answer.get(tokens.len() - marker - 1).copied().unwrap_or(self.eos);
        let mut logits = vec![f32::NEG_INFINITY; self.vocab];
        logits[next as usize] = 0.0;
        Ok(logits)
    }

    /// Stateless, so any number of sequences decode together (through the trait's default
    /// batched call, one sequence after another).
    fn slots(&self) -> usize {
        8
    }
}

#[test]
fn a_full_queue_answers_503_and_a_confident_answer_is_reported() {
    let mut tok = bitnet_tokenizer_word_for_tests();
    // Three times: the tokenizer's default keeps words seen at least twice.
    let line = r#"[USER] take me home [INTENT] {"intent":"navigate","slots":{}}"#.to_string();
    tok.train(&mut std::iter::repeat_n(line, 3)).expect("train");
    let model = Gated::new(tok.as_ref(), None);
    let gate = Arc::clone(&model.gate);
    let tokenizer: Arc<dyn Tokenizer> = Arc::from(tok);
    let decoding = Decoding { tokenizer, seq_len: SEQ_LEN, threshold: 0.5 };
    let options = ServeOptions { queue: 2, max_batch: 2, ..ServeOptions::default() };
    let server = Server::start_with(vec![Box::new(model)], decoding, "127.0.0.1:0", &options)
        .expect("start");
    let base = format!("http://{}", server.addr());
    let client = Client::new();
    // Two utterances fill the queue while the gate is shut; a third is refused at once.
    let waiting = {
        let (client, url) = (client.clone(), format!("{base}/v1/intents"));
        std::thread::spawn(move || {
            post(&client, &url, &json!({"utterances": ["take me home", "home please"]}))
        })
    };
    let health = || -> Value {
        client.get(format!("{base}/health")).send().expect("health").json().expect("json")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while health()["held"] != json!(2) {
        assert!(std::time::Instant::now() < deadline, "the batch never queued");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (status, e) = post(&client, &format!("{base}/v1/intent"), &json!({"utterance": "home"}));
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    assert!(e["error"].as_str().is_some_and(|m| m.contains("busy")), "{e}");
    {
        let (open, cv) = &*gate;
        *open.lock().expect("gate") = true;
        cv.notify_all();
    }
    let (status, batch) = waiting.join().expect("client thread");
    assert_eq!(status, StatusCode::OK, "{batch}");
    let want = json!({"intent": "navigate", "slots": {}, "confidence": 1.0, "abstained": false});
    assert_eq!(batch["answers"], json!([want, want]));
    // A model thread gives its slot back when its job ends, just after it has sent the
    // answer: the client may read the answers a moment before the count drops.
    while health()["held"] != json!(0) {
        assert!(std::time::Instant::now() < deadline, "the queue never emptied: {}", health());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    server.stop();
}

/// A model that fails on one utterance while it decodes others with it: that one gets a 500,
/// the others their answers (each is decoded again alone), and the server goes on serving.
#[test]
fn a_model_failure_answers_its_utterance_500_and_spares_the_others() {
    let mut tok = bitnet_tokenizer_word_for_tests();
    let lines = [
        r#"[USER] take me home [INTENT] {"intent":"navigate","slots":{}}"#,
        r#"[USER] boom [INTENT] {"intent":"navigate","slots":{}}"#,
    ];
    tok.train(&mut lines.iter().flat_map(|l| std::iter::repeat_n(l.to_string(), 3)))
        .expect("train");
    let model = Gated::new(tok.as_ref(), Some("boom"));
    let gate = Arc::clone(&model.gate);
    let tokenizer: Arc<dyn Tokenizer> = Arc::from(tok);
    let decoding = Decoding { tokenizer, seq_len: SEQ_LEN, threshold: 0.5 };
    let options = ServeOptions { decode_batch: 8, ..ServeOptions::default() };
    let server = Server::start_with(vec![Box::new(model)], decoding, "127.0.0.1:0", &options)
        .expect("start");
    let base = format!("http://{}", server.addr());
    let client = Client::new();
    let health = || -> Value {
        client.get(format!("{base}/health")).send().expect("health").json().expect("json")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let send = |utterance: &'static str| {
        let (client, url) = (client.clone(), format!("{base}/v1/intent"));
        std::thread::spawn(move || post(&client, &url, &json!({ "utterance": utterance })))
    };
    // Three good utterances, then the poisoned one, all held while the gate is shut; the model
    // takes the last three into one step once the first is through.
    let mut sent = Vec::new();
    for (i, u) in ["take me home", "take me home", "take me home", "boom"].into_iter().enumerate() {
        sent.push((u, send(u)));
        while health()["held"] != json!(i + 1) {
            assert!(std::time::Instant::now() < deadline, "never queued: {}", health());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    {
        let (open, cv) = &*gate;
        *open.lock().expect("gate") = true;
        cv.notify_all();
    }
    let want = json!({"intent": "navigate", "slots": {}, "confidence": 1.0, "abstained": false});
    for (u, reply) in sent {
        let (status, body) = reply.join().expect("client");
        if u == "boom" {
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
            assert!(body["error"].as_str().is_some_and(|m| m.contains("poisoned")), "{body}");
        } else {
            assert_eq!((status, body), (StatusCode::OK, want.clone()));
        }
    }
    let (status, body) =
        post(&client, &format!("{base}/v1/intent"), &json!({"utterance": "take me home"}));
    assert_eq!((status, body), (StatusCode::OK, want));
    server.stop();
}

fn bitnet_tokenizer_word_for_tests() -> Box<dyn Tokenizer> {
    let registry = bitnet_plugins::registry().expect("registry");
    let ctx = BuildContext::new(bitnet_tests::tiny_model(64));
    registry.build::<dyn Tokenizer>("word-level", &toml::Table::new(), &ctx).expect("tokenizer")
}

#[test]
fn classify_reads_one_utterance_a_line_and_names_the_line_too_long() {
    let f = fixture();
    let source = InferenceSource::from_export(&f.export, &f.config, None).expect("load export");
    let mut models = source.models(1).expect("model");
    let model = models[0].as_mut();
    let tok = source.tokenizer.as_ref();
    let input = "take me to dallas texas\n\n  \nwhere is the nearest weigh station\r\n";
    let mut out = Vec::new();
    classify_lines(input.as_bytes(), &mut out, model, tok, SEQ_LEN, 0.5).expect("classify");
    let answers: Vec<Value> = String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON answer a line"))
        .collect();
    assert_eq!(answers.len(), 4);
    answers.iter().for_each(assert_answer);
    let blank = json!({"intent": "none", "slots": {}, "confidence": 0.0, "abstained": true});
    assert_eq!((&answers[1], &answers[2]), (&blank, &blank));

    let long = format!("fine\n{}\nnever read\n", "a".repeat(MAX_LINE_BYTES + 1));
    let mut out = Vec::new();
    let err = classify_lines(long.as_bytes(), &mut out, model, tok, SEQ_LEN, 0.5)
        .expect_err("line 2 is too long");
    assert!(format!("{err:#}").contains("stdin line 2"), "{err:#}");
    assert_eq!(String::from_utf8(out).expect("utf-8").lines().count(), 1, "line 1 answered");
    let err = classify_lines(&b"dallas \xff\n"[..], &mut Vec::new(), model, tok, SEQ_LEN, 0.5)
        .expect_err("not UTF-8");
    assert!(format!("{err:#}").contains("line 1") && format!("{err:#}").contains("UTF-8"));
}
