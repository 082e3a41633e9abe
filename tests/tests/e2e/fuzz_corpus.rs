//! Replays the committed fuzz corpora (`fuzz/corpus/`) through the fuzz targets' own checks on
//! every test run, so that whatever the fuzzers once found stays fixed without rebuilding them.

#[path = "../../../fuzz/src/checks.rs"]
#[allow(dead_code)]
mod checks;

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = medchain_tests::models_dir().join(format!("../fuzz/corpus/{target}"));
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        let result = std::panic::catch_unwind(|| check(&data));
        assert!(result.is_ok(), "{} fails its check", path.display());
        n += 1;
    }
    n
}

#[test]
fn the_json_request_corpus_passes() {
    assert!(replay("json_request", checks::json_request) >= 20);
}

#[test]
fn the_image_upload_corpus_passes() {
    assert!(replay("image_upload", checks::image_upload) >= 10);
}
