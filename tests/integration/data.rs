//! The TruckMate data pipeline end to end, with the registered plugins: generate a corpus, train
//! each tokenizer through the registry, write shards, pack windows, and evaluate a tiny untrained
//! model through the packed-ternary inference path.

use bitnet_framework::BuildContext;
use bitnet_framework::model::{IGNORE_INDEX, ModelKernel};
use bitnet_framework::tokenizer::Tokenizer;
use bitnet_runtime::data::dir::{DataDir, Split, write_split_shards};
use bitnet_runtime::data::loader::LoaderOptions;
use bitnet_truckmate::eval::{evaluate_lines, mean_loss};
use bitnet_truckmate::eval_set;

fn pipeline(kind: &str) {
    let tmp = bitnet_tests::temp_dir();
    let dir = DataDir::new(tmp.path().join("data"));
    let corpus = bitnet_truckmate::corpus::generate(600, 11);
    bitnet_truckmate::write_corpus(&dir, &corpus).expect("write corpus");
    let registry = bitnet_plugins::registry().expect("registry");
    let ctx = BuildContext::new(bitnet_tests::tiny_model(64));
    let mut options = toml::Table::new();
    options.insert("max_vocab".into(), toml::Value::Integer(800));
    let mut tok = registry.build::<dyn Tokenizer>(kind, &options, &ctx).expect("tokenizer");
    let train = dir.read_split(Split::Train).expect("train split");
    tok.train(&mut train.iter().cloned()).expect("train tokenizer");
    tok.save(&dir.tokenizer_file(kind)).expect("save");
    let mut reloaded = registry.build::<dyn Tokenizer>(kind, &options, &ctx).expect("tokenizer");
    reloaded.load(&dir.tokenizer_file(kind)).expect("load");
    assert_eq!(reloaded.content_hash(), tok.content_hash());
    for split in Split::ALL {
        let lines = dir.read_split(split).expect("split");
        write_split_shards(&dir, kind, split, reloaded.as_ref(), &lines, 4096).expect("shards");
    }
    assert!(dir.shard_paths(kind, Split::Train).expect("list").len() > 1, "several shards");

    let mut model = bitnet_tests::tiny_model(reloaded.vocab_size());
    model.seq_len = 96;
    let mut kernel = registry
        .build::<dyn ModelKernel>("bitnet-b158", &toml::Table::new(), &BuildContext::new(model))
        .expect("kernel");
    let mut params = vec![0.0; kernel.layout().total_params()];
    kernel.init_params(7, &mut params).expect("init");

    let mut loader = dir
        .loader(
            kind,
            Split::Validation,
            reloaded.as_ref(),
            LoaderOptions { shuffle: false, ..Default::default() },
        )
        .expect("loader");
    assert_eq!(loader.skipped_examples(96).expect("plan"), 0, "{kind}: examples fit 96 tokens");
    let batches = loader.epoch_batches(4, 96).expect("batches");
    let examples: usize = batches
        .iter()
        .map(|b| b.inputs.iter().filter(|&&t| t == reloaded.special_tokens().bos).count())
        .sum();
    assert_eq!(examples, corpus.validation.len(), "every validation example once");
    assert!(batches.iter().all(|b| b.targets.iter().any(|&t| t != IGNORE_INDEX)));
    let (loss, targets) = mean_loss(kernel.as_mut(), &params, &batches, &mut |_| {}).expect("loss");
    let uniform = (reloaded.vocab_size() as f64).ln();
    assert!(targets > 0 && loss.is_finite(), "{kind}: loss {loss} over {targets}");
    assert!(
        loss > 0.5 * uniform && loss < 2.0 * uniform,
        "{kind}: untrained loss {loss} vs ln V {uniform}"
    );

    let weights = kernel.export_inference(&params).expect("export");
    let mut inference = kernel.load_inference(&weights).expect("load inference");
    let lines = &corpus.test[..4];
    let mut calls = 0;
    let tally =
        evaluate_lines(inference.as_mut(), reloaded.as_ref(), lines, 96, &mut |_| calls += 1)
            .expect("evaluate");
    assert_eq!((tally.examples, calls), (4, 4));
    assert!(tally.intent_correct + tally.invalid_json <= 4);
    assert!((0.0..=1.0).contains(&tally.invalid_json_rate()));

    // The hand-written set goes through the same decoder, two models sharing the lines.
    let set = eval_set::parse_eval_set(include_str!(
        "../../plugins/truckmate/data/handwritten-eval.jsonl"
    ))
    .expect("the shipped set parses");
    let items = &set[..6];
    let mut models = vec![
        kernel.load_inference(&weights).expect("model 1"),
        kernel.load_inference(&weights).expect("model 2"),
    ];
    let decoded = std::sync::atomic::AtomicUsize::new(0);
    let outputs = eval_set::decode_all(&mut models, reloaded.as_ref(), items, 96, &|| {
        decoded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    })
    .expect("decode");
    assert_eq!((outputs.len(), decoded.into_inner()), (6, 6));
    let report = eval_set::score_outputs(items, &outputs, 0.5);
    assert_eq!(report.tally.examples, 6);
    let a = report.abstention;
    assert_eq!(a.in_domain.of + a.out_of_domain.of, 6, "{a:?}");
    assert!(outputs.iter().all(|o| (0.0..=1.0).contains(&o.confidence)), "{outputs:?}");
    assert_eq!(report.confusion.values().flat_map(|m| m.values()).sum::<u64>(), 6);
    assert!(report.misses.iter().all(|m| m.line <= 6 && !m.expected.is_empty()), "{report:?}");
}

#[test]
fn word_level_pipeline() {
    pipeline("word-level");
}

#[test]
fn bpe_pipeline() {
    pipeline("bpe");
}

/// `data.extra_train`: hand-written lines join the training split (only it), the manifest names
/// the file by hash, and once the file changes the directory's corpus is refused as stale.
#[test]
fn hand_written_lines_join_the_training_split_and_a_changed_file_is_stale() {
    use bitnet_tests::procs::bitnet_bin;
    let tmp = bitnet_tests::temp_dir();
    let set = tmp.path().join("cab-notes.jsonl");
    let line = r#"{"utterance": "Haul me over to Tulsa, would ya?", "intent": "navigate", "slots": {"city": "tulsa"}}"#;
    std::fs::write(&set, format!("{line}\n")).expect("write set");
    let data = tmp.path().join("data");
    let run = |command: &str| {
        std::process::Command::new(bitnet_bin())
            .args([command, "--no-env", "--set", "data.corpus_count=300"])
            .arg("--set")
            .arg(format!("data.dir={:?}", data.display().to_string()))
            .arg("--set")
            .arg(format!("data.extra_train=[{:?}]", set.display().to_string()))
            .args(["--set", "data.extra_train_copies=4"])
            .output()
            .expect("run bitnet")
    };
    let out = run("generate-corpus");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("4 of them 1 hand-written utterances x 4"), "{stdout}");
    let dir = DataDir::new(data.clone());
    let wanted = r#"[USER] haul me over to tulsa would ya [INTENT] {"intent":"navigate","slots":{"city":"tulsa"}}"#;
    let train = dir.read_split(Split::Train).expect("train");
    assert_eq!(train.iter().filter(|l| *l == wanted).count(), 4, "four copies in train");
    assert_eq!(train.len(), 270 + 4);
    for split in [Split::Validation, Split::Test] {
        let lines = dir.read_split(split).expect("held-out split");
        assert!(!lines.iter().any(|l| l == wanted), "{split:?} holds no hand-written line");
    }
    let manifest = bitnet_truckmate::read_manifest(&dir).expect("read").expect("manifest");
    assert!(manifest.contains("extra_train cab-notes.jsonl@"), "{manifest}");
    assert!(manifest.ends_with("copies 4"), "{manifest}");

    std::fs::write(&set, format!("{line}\n{line}\n")).expect("change set");
    let out = run("tokenize-corpus");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a changed set makes the corpus stale: {stderr}");
    assert!(stderr.contains("holds a corpus made with"), "{stderr}");

    std::fs::remove_file(&set).expect("remove set");
    let out = run("tokenize-corpus");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("cab-notes.jsonl"), "names the missing file: {stderr}");
}
