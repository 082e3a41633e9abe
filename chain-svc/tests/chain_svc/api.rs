//! chain-svc over HTTP with its embedded anvil: accept → pending → confirmed, idempotent
//! accept, conflicts, validation, the internal token, and nothing identifying in the calldata.

use medchain_tests::chain as kit;

use medchain_core::auth::Peer;

use std::time::Duration;

use alloy::primitives::TxHash;
use alloy::providers::{Provider, ProviderBuilder};
use medchain_chain_svc::{Settings, build};
use medchain_tests::spawn_chain;
use serde_json::{Value, json};

async fn spawn(data: &std::path::Path) -> (String, String) {
    spawn_chain(data, |_| {}).await
}

fn body(id: &str) -> Value {
    json!({
        "prediction_id": id,
        "disease": "diabetes",
        "modality": "tabular",
        "model": {"id": "diabetes-tabular-xgb", "version": "1.0.0", "sha256": "2489"},
        "label": 1,
        "probability": 0.7730,
        "patient_id": "MRN-0042",
        "input_digest": format!("0x{}", "ab".repeat(32)),
    })
}

/// POSTs a record, `signed` as the service of its disease (or with no credential).
async fn post(base: &str, v: &Value, signed: bool) -> reqwest::Response {
    let mut rb = reqwest::Client::new()
        .post(format!("{base}/v1/records"))
        .json(v);
    if signed {
        rb = kit::as_writer(rb, v["disease"].as_str().unwrap_or_default());
    }
    rb.send().await.expect("post")
}

async fn get(base: &str, id: &str) -> Value {
    kit::get_json(&format!("{base}/v1/records/{id}")).await
}

#[tokio::test]
async fn records_are_accepted_confirmed_and_carry_no_patient_data() {
    let data = tempfile::tempdir().expect("tempdir");
    let (base, rpc) = spawn(data.path()).await;
    let id = "0b9c6f9e-8a35-4f8e-9d59-1f7c3a2b4c5d";

    let res = post(&base, &body(id), true).await;
    assert_eq!(res.status(), 202);
    let receipt: Value = res.json().await.expect("receipt");
    assert_eq!(receipt["status"], "pending");
    assert_eq!(receipt["prediction_id"], id);
    let salt = receipt["salt"].clone();

    let mut rec = Value::Null;
    for _ in 0..200 {
        rec = get(&base, id).await;
        if rec["status"] == "confirmed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rec["status"], "confirmed", "{rec}");
    assert!(rec["block_number"].as_u64().is_some_and(|b| b > 0));

    // The same request again: the same record, not a second one.
    let again: Value = post(&base, &body(id), true)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(again["salt"], salt);
    assert_eq!(again["status"], "confirmed");
    // Same id, other content: a conflict.
    let mut changed = body(id);
    changed["label"] = json!(0);
    assert_eq!(post(&base, &changed, true).await.status(), 409);

    // The transaction's calldata: selector, the array's offset and length, and per record three
    // words (id, patient reference, record hash) — none of them the patient id or a value.
    let tx_hash: TxHash = rec["tx_hash"]
        .as_str()
        .expect("tx hash")
        .parse()
        .expect("hash");
    let provider = ProviderBuilder::new().connect_http(rpc.parse().expect("url"));
    let tx = provider
        .get_transaction_by_hash(tx_hash)
        .await
        .expect("rpc")
        .expect("tx");
    let input = alloy::consensus::Transaction::input(&tx).to_vec();
    assert_eq!(input.len(), 4 + 2 * 32 + 3 * 32);
    assert!(
        hay_has(&input, &rec["record_hash"]),
        "the record hash is committed"
    );
    let hay = alloy::primitives::hex::encode(&input);
    for needle in [
        alloy::primitives::hex::encode("MRN-0042"),
        alloy::primitives::hex::encode("0042"),
        alloy::primitives::hex::encode("diabetes"),
        "ab".repeat(32), // the input digest itself is not on chain, only its salted hash
    ] {
        assert!(!hay.contains(&needle), "calldata contains {needle}");
    }
}

/// Whether `input` holds the 32 bytes of the hex string `value`.
fn hay_has(input: &[u8], value: &Value) -> bool {
    let hex = value.as_str().unwrap_or_default().trim_start_matches("0x");
    alloy::primitives::hex::encode(input).contains(hex) && hex.len() == 64
}

#[tokio::test]
async fn bad_requests_are_refused() {
    let data = tempfile::tempdir().expect("tempdir");
    let (base, _) = spawn(data.path()).await;
    let id = "6a1f6f2e-1c3d-4e5f-8a9b-0c1d2e3f4a5b";
    assert_eq!(post(&base, &body(id), false).await.status(), 401);
    for (field, value) in [
        ("prediction_id", json!("not-a-uuid")),
        ("disease", json!("lungs")),
        ("modality", json!("audio")),
        ("probability", json!(1.5)),
        ("patient_id", json!("")),
        // Invisible characters would give one patient several references.
        ("patient_id", json!("MRN\u{200B}-0042")),
        ("patient_id", json!("MRN-\u{202E}2400")),
        ("input_digest", json!("0x12")),
        ("extra", json!(1)),
    ] {
        let mut b = body(id);
        b[field] = value;
        let res = post(&base, &b, true).await;
        assert_eq!(res.status(), 422, "{field}");
        let p: Value = res.json().await.expect("problem");
        assert_eq!(p["field"], field, "{p}");
    }
    let missing = kit::get_as_auditor(&format!("{base}/v1/records/{id}")).await;
    assert_eq!(missing.status(), 404);
}

/// Least privilege between services and per-caller reading (issue 18): each disease service
/// writes its own disease's records only, the gateway reads and writes nothing, the monitor
/// does neither; a clinician reads what they created and their patients' records, and any
/// other record looks exactly like one that does not exist.
#[tokio::test]
async fn records_are_written_by_their_own_service_and_read_by_whom_they_concern() {
    let data = tempfile::tempdir().expect("tempdir");
    let (base, _) = spawn(data.path()).await;
    let client = reqwest::Client::new();
    let records = format!("{base}/v1/records");
    let x = "a1111111-2222-4333-8444-555555555555";
    let mut rec = record_for(x, "MRN-P1", &digest_of(b"x"), "tabular");
    let send = |rb: reqwest::RequestBuilder| async move {
        let res = rb.send().await.expect("send");
        let status = res.status().as_u16();
        (status, res.json::<Value>().await.unwrap_or(Value::Null))
    };
    // Writing: a diabetes record from heart-svc, the gateway or the monitor is refused.
    for from in [Peer::Heart, Peer::Gateway, Peer::Monitor] {
        let rb = client
            .post(&records)
            .header("x-internal-token", kit::credential(from))
            .json(&rec);
        let (status, p) = send(rb).await;
        assert_eq!(status, 403, "{from}: {p}");
    }
    rec["created_by"] = json!("dr a");
    let (status, p) = send(kit::as_writer(client.post(&records), "diabetes").json(&rec)).await;
    assert_eq!((status, &p["field"]), (422, &json!("created_by")), "{p}");
    rec["created_by"] = json!("dr-a");
    let (status, _) = send(kit::as_writer(client.post(&records), "diabetes").json(&rec)).await;
    assert_eq!(status, 202);

    // Reading: not with a disease service's credential, not without a named caller.
    let get = |id: &str| client.get(format!("{base}/v1/records/{id}"));
    let (status, _) = send(kit::as_writer(get(x), "diabetes")).await;
    assert_eq!(status, 403);
    let (status, p) = send(get(x).header("x-internal-token", kit::credential(Peer::Gateway))).await;
    assert_eq!(status, 403, "{p}");
    let (status, p) = send(
        get(x)
            .header("x-internal-token", kit::credential(Peer::Gateway))
            .header(medchain_core::auth::CALLER_HEADER, "ops")
            .header(medchain_core::auth::CALLER_ROLE_HEADER, "admin"),
    )
    .await;
    assert_eq!(status, 403, "admins read no records: {p}");

    // dr-a made it; dr-b did not and has never seen the patient: to dr-b it does not exist.
    let (status, mine) = send(kit::as_clinician(get(x), "dr-a")).await;
    assert_eq!((status, &mine["prediction_id"]), (200, &json!(x)), "{mine}");
    let (status, hidden) = send(kit::as_clinician(get(x), "dr-b")).await;
    let unknown = "b1111111-2222-4333-8444-555555555555";
    let (status_unknown, absent) = send(kit::as_clinician(get(unknown), "dr-b")).await;
    assert_eq!((status, status_unknown), (404, 404));
    assert_eq!(
        hidden["detail"].as_str().map(|d| d.replace(x, "ID")),
        absent["detail"].as_str().map(|d| d.replace(unknown, "ID")),
        "a hidden record reads as a missing one"
    );
    let list = |who: &'static str, patient: &'static str| {
        let rb = client
            .post(format!("{base}/v1/patients/records"))
            .json(&json!({"patient_id": patient}));
        send(kit::as_clinician(rb, who))
    };
    let (_, a) = list("dr-a", "MRN-P1").await;
    assert_eq!(a["count"], 1, "{a}");
    let (_, b) = list("dr-b", "MRN-P1").await;
    let (_, nobody) = list("dr-b", "MRN-P9").await;
    assert_eq!(b["count"], 0, "{b}");
    assert_eq!(
        b, nobody,
        "another's patient reads as one nobody has records of"
    );
    assert!(b["patient_ref"].is_null(), "not even the reference: {b}");
    assert!(a["patient_ref"].is_string(), "{a}");
    let audit = kit::list_patient(&base, "MRN-P1").await;
    assert_eq!(audit["count"], 1, "an auditor sees every record");

    // dr-b records a prediction for the patient: now the patient is theirs too, and so is
    // the patient's whole history.
    let y = "c1111111-2222-4333-8444-555555555555";
    let mut second = record_for(y, "MRN-P1", &digest_of(b"y"), "tabular");
    second["created_by"] = json!("dr-b");
    let (status, _) = send(kit::as_writer(client.post(&records), "diabetes").json(&second)).await;
    assert_eq!(status, 202);
    let (_, b) = list("dr-b", "MRN-P1").await;
    assert_eq!(b["count"], 2, "{b}");
    let (status, _) = send(kit::as_clinician(get(x), "dr-b")).await;
    assert_eq!(status, 200);
    // ... and dr-a sees dr-b's record of their patient.
    let (status, _) = send(kit::as_clinician(get(y), "dr-a")).await;
    assert_eq!(status, 200);
}

/// Recorder management: an admin (as the gateway names them) grants and revokes an account's
/// recorder role with the service's key; other roles are refused; a bad address is named.
#[tokio::test]
async fn an_admin_grants_and_revokes_recorders() {
    let data = tempfile::tempdir().expect("tempdir");
    let (base, _) = spawn(data.path()).await;
    let client = reqwest::Client::new();
    let account = "0x00000000000000000000000000000000000000a1";
    let url = format!("{base}/v1/recorders/{account}");
    let as_admin = |rb: reqwest::RequestBuilder| {
        rb.header("x-internal-token", kit::credential(Peer::Gateway))
            .header(medchain_core::auth::CALLER_HEADER, "ops")
            .header(medchain_core::auth::CALLER_ROLE_HEADER, "admin")
    };
    let status = || async {
        let res = as_admin(client.get(&url)).send().await.expect("get");
        assert_eq!(res.status(), 200);
        res.json::<Value>().await.expect("json")
    };
    let before = status().await;
    assert_eq!(before["recorder"], false, "{before}");
    assert_eq!(before["admin"], before["signer"], "{before}");
    for (on, want) in [(true, true), (false, false)] {
        let res = as_admin(client.post(&url))
            .json(&json!({"recorder": on}))
            .send()
            .await
            .expect("post");
        assert_eq!(res.status(), 202);
        let sent: Value = res.json().await.expect("json");
        assert!(sent["tx_hash"].is_string(), "{sent}");
        let mut now = Value::Null;
        for _ in 0..100 {
            now = status().await;
            if now["recorder"] == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(now["recorder"], want, "{now}");
    }
    // Not for other roles, not with a disease service's credential; a bad address is named.
    let res = kit::as_auditor(client.post(&url))
        .json(&json!({"recorder": true}))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 403);
    let res = kit::as_writer(client.get(&url), "heart")
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 403);
    let res = as_admin(client.get(format!("{base}/v1/recorders/0x12")))
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 422);
    let p: Value = res.json().await.expect("json");
    assert_eq!(p["field"], "address", "{p}");
}

fn digest_of(bytes: &[u8]) -> String {
    format!(
        "0x{}",
        alloy::primitives::hex::encode(medchain_core::audit::sha256(bytes))
    )
}

/// A record of `patient` that the clinician `dr-a` asked for.
fn record_for(id: &str, patient: &str, digest: &str, modality: &str) -> Value {
    let mut b = body(id);
    b["created_by"] = json!("dr-a");
    b["patient_id"] = json!(patient);
    b["input_digest"] = json!(digest);
    b["modality"] = json!(modality);
    b
}

async fn wait_confirmed(base: &str, id: &str) -> Value {
    for _ in 0..200 {
        let rec = get(base, id).await;
        if rec["status"] == "confirmed" {
            return rec;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id} not confirmed");
}

async fn verify(request: reqwest::RequestBuilder) -> (u16, Value) {
    let res = kit::as_auditor(request).send().await.expect("verify");
    let status = res.status().as_u16();
    (status, res.json().await.expect("json"))
}

#[tokio::test]
async fn records_verify_against_the_chain_and_list_by_patient() {
    let data = tempfile::tempdir().expect("tempdir");
    let (base, rpc) = spawn_chain(data.path(), |s| s.limits.stored_salt_per_minute = 2).await;
    let client = reqwest::Client::new();
    let features = json!({"pregnancies": 6, "glucose": 148, "bmi": 33.6, "insulin": null});
    let canonical = medchain_core::audit::canonical_features(features.as_object().expect("object"))
        .expect("canonical");
    let image = b"\xff\xd8\xff\xe0 pretend these are the uploaded JPEG bytes".to_vec();
    let (tab, img, other) = (
        "11111111-2222-4333-8444-555555555555",
        "21111111-2222-4333-8444-555555555555",
        "31111111-2222-4333-8444-555555555555",
    );
    let mut receipts = Vec::new();
    for (id, patient, digest, modality) in [
        (tab, "MRN-7", digest_of(&canonical), "tabular"),
        (img, "MRN-7", digest_of(&image), "image"),
        (other, "MRN-8", digest_of(b"x"), "tabular"),
    ] {
        let res = post(&base, &record_for(id, patient, &digest, modality), true).await;
        assert_eq!(res.status(), 202);
        receipts.push(res.json::<Value>().await.expect("receipt"));
    }
    for id in [tab, img, other] {
        let rec = wait_confirmed(&base, id).await;
        assert_eq!(rec["matches_chain"], true, "{rec}");
        assert_eq!(rec["on_chain"]["record_hash"], rec["record_hash"]);
        assert_eq!(rec["commitments_on_chain"], 1);
        assert_eq!(rec["disease"], "diabetes");
    }
    let url = |id: &str| format!("{base}/v1/records/{id}/verify");

    // The review: without a salt, verify fell back to the service's stored salt, so guesses
    // about a patient's glucose answered false / true / false. Now no salt, no answer — even
    // for the clinician who made the record; another clinician hears there is no record.
    for glucose in [140, 148, 150] {
        let guess = json!({"features": {"bmi": 33.6, "glucose": glucose, "pregnancies": 6}});
        let res = kit::as_clinician(client.post(url(tab)), "dr-a")
            .json(&guess)
            .send()
            .await
            .expect("verify");
        assert_eq!(res.status(), 422);
        let v: Value = res.json().await.expect("json");
        assert_eq!(v["field"], "salt", "{v}");
        assert!(v.get("verified").is_none(), "{v}");
        let res = kit::as_clinician(client.post(url(tab)), "dr-b")
            .json(&guess)
            .send()
            .await
            .expect("verify");
        assert_eq!(res.status(), 404);
    }
    // An auditor may use the stored salt: logged, and limited per auditor (2 a minute here).
    let guess = |g: u32| json!({"features": {"bmi": 33.6, "glucose": g, "pregnancies": 6}});
    let (s, v) = verify(client.post(url(tab)).json(&guess(148))).await;
    assert_eq!(
        (s, &v["verified"], &v["salt"]),
        (200, &json!(true), &json!("stored")),
        "{v}"
    );
    let (s, v) = verify(client.post(url(tab)).json(&guess(150))).await;
    assert_eq!((s, &v["verified"]), (200, &json!(false)), "{v}");
    let (s, v) = verify(client.post(url(tab)).json(&guess(140))).await;
    assert_eq!(s, 429, "{v}");
    let salt = receipts[0]["salt"].clone();
    // Tabular: the same features, in any order and integer spelling, with the receipt's salt.
    let reordered =
        json!({"features": {"bmi": 33.6, "glucose": 148.0, "pregnancies": 6}, "salt": salt});
    let (s, v) = verify(client.post(url(tab)).json(&reordered)).await;
    assert_eq!((s, &v["verified"]), (200, &json!(true)), "{v}");
    // One changed value: the chain says no.
    let changed =
        json!({"features": {"bmi": 33.6, "glucose": 149, "pregnancies": 6}, "salt": salt});
    let (s, v) = verify(client.post(url(tab)).json(&changed)).await;
    assert_eq!((s, &v["verified"]), (200, &json!(false)), "{v}");
    // The receipt's salt works with the patient; another salt does not.
    let with_salt = json!({"features": features, "salt": salt, "patient_id": "MRN-7"});
    let (_, v) = verify(client.post(url(tab)).json(&with_salt)).await;
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["checks"]["patient"], true);
    let wrong_salt = json!({"features": features, "salt": format!("0x{}", "11".repeat(32))});
    let (_, v) = verify(client.post(url(tab)).json(&wrong_salt)).await;
    assert_eq!(v["verified"], false);
    // The right input but another patient: not verified, and the check says which part failed.
    let wrong_patient = json!({"features": features, "salt": salt, "patient_id": "MRN-8"});
    let (_, v) = verify(client.post(url(tab)).json(&wrong_patient)).await;
    assert_eq!(
        (
            &v["verified"],
            &v["checks"]["input_commitment"],
            &v["checks"]["patient"]
        ),
        (&json!(false), &json!(true), &json!(false)),
        "{v}"
    );

    // Image: the raw bytes as the body, the salt in the query; one flipped byte fails.
    let salt = receipts[1]["salt"].as_str().expect("salt").to_string();
    let (s, v) = verify(
        client
            .post(format!("{}?salt={salt}", url(img)))
            .header("content-type", "image/jpeg")
            .body(image.clone()),
    )
    .await;
    assert_eq!(
        (s, &v["verified"], &v["input"]),
        (200, &json!(true), &json!("image")),
        "{v}"
    );
    let mut tampered = image.clone();
    tampered[10] ^= 1;
    let (_, v) = verify(
        client
            .post(format!("{}?salt={salt}", url(img)))
            .header("content-type", "image/jpeg")
            .body(tampered),
    )
    .await;
    assert_eq!(v["verified"], false);
    // The review: patient ids travelled in URLs (the verify query), which edges log. Now a
    // patient id in the query is refused; with an image, send its digest as JSON instead.
    let (s, v) = verify(
        client
            .post(format!("{}?salt={salt}&patient_id=MRN-7", url(img)))
            .header("content-type", "application/octet-stream")
            .body(image.clone()),
    )
    .await;
    assert_eq!((s, &v["field"]), (422, &json!("patient_id")), "{v}");
    let by_digest = json!({"input_digest": digest_of(&image), "salt": salt, "patient_id": "MRN-7"});
    let (s, v) = verify(client.post(url(img)).json(&by_digest)).await;
    assert_eq!(
        (s, &v["verified"], &v["checks"]["patient"]),
        (200, &json!(true), &json!(true)),
        "{v}"
    );
    // And the listing takes the patient id in its body only.
    let old = kit::as_auditor(client.get(format!("{base}/v1/patients/MRN-7/records")))
        .send()
        .await
        .expect("get");
    assert_eq!(old.status(), 404);

    // Bad verify requests name what is wrong.
    for (body, field) in [
        (json!({}), "features"),
        (json!({"features": {"age": "50"}}), "features.age"),
        (
            json!({"features": {}, "input_digest": digest_of(b"")}),
            "input_digest",
        ),
        (json!({"features": {}, "nonsense": 1}), "nonsense"),
    ] {
        let (s, v) = verify(client.post(url(tab)).json(&body)).await;
        assert_eq!((s, &v["field"]), (422, &json!(field)), "{v}");
    }
    let (s, _) = verify(
        client
            .post(url(tab))
            .header("content-type", "image/png")
            .body(Vec::new()),
    )
    .await;
    assert_eq!(s, 422);
    let unknown = "99999999-2222-4333-8444-555555555555";
    let (s, v) = verify(client.post(url(unknown)).json(&reordered)).await;
    assert_eq!(s, 404, "{v}");

    // Per patient: the keyed reference finds exactly that patient's records.
    let mine: Value = kit::list_patient(&base, "MRN-7").await;
    let ids: Vec<&str> = mine["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["prediction_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, [tab, img], "{mine}");
    assert_eq!(mine["records"][1]["modality"], "image");
    assert_eq!(mine["records"][1]["matches_chain"], true);
    assert_eq!(
        mine["records"][1]["record_hash"],
        receipts[1]["record_hash"]
    );
    assert_eq!(mine["patient_ref"], receipts[0]["patient_ref"]);
    let theirs: Value = kit::list_patient(&base, "MRN-8").await;
    assert_eq!(theirs["count"], 1);
    let nobody: Value = kit::list_patient(&base, "MRN-9").await;
    assert_eq!(nobody["count"], 0);
    // A patient id typed decomposed (NFD) is the same patient as composed (NFC).
    let nfd = "41111111-2222-4333-8444-555555555555";
    let res = post(
        &base,
        &record_for(nfd, "Jose\u{301}", &digest_of(b"y"), "tabular"),
        true,
    )
    .await;
    assert_eq!(res.status(), 202);
    wait_confirmed(&base, nfd).await;
    let nfc: Value = kit::list_patient(&base, "Jos\u{e9}").await;
    assert_eq!(nfc["count"], 1, "{nfc}");
    assert_eq!(nfc["records"][0]["prediction_id"], nfd);

    // Readiness: contract present and signer funded; an empty signer makes it not ready.
    let ready = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    let key = std::fs::read_to_string(data.path().join("dev-signer.key")).expect("dev key");
    let signer: alloy::signers::local::PrivateKeySigner = key.trim().parse().expect("key");
    let provider = ProviderBuilder::new().connect_http(rpc.parse().expect("url"));
    let _: () = provider
        .raw_request(
            "anvil_setBalance".into(),
            (signer.address(), alloy::primitives::U256::ZERO),
        )
        .await
        .expect("drain");
    let not_ready = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(not_ready.status(), 503);
    let body: Value = not_ready.json().await.expect("json");
    let funds = body["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "signer_funds")
        .expect("funds check")
        .clone();
    assert_eq!(funds["ok"], false, "{body}");

    // Metrics: the outbox gauges and counters are exported.
    let metrics = kit::get_metrics(&base).await;
    for name in [
        "chain_outbox_pending 0",
        "chain_outbox_oldest_pending_age_seconds",
        "chain_records_accepted_total",
        "chain_records_confirmed_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from metrics");
    }
}

#[tokio::test]
async fn an_external_node_on_another_chain_is_refused_before_anything_is_sent() {
    let state = tempfile::tempdir().expect("tempdir");
    let anvil = medchain_chain_svc::anvil::Anvil::start(
        &medchain_chain_svc::anvil::Anvil::binary(""),
        state.path(),
        31337,
    )
    .expect("anvil");
    let mut s = Settings::load().expect("defaults");
    s.server.port = 0;
    s.storage.data_dir = state.path().join("svc").to_str().expect("utf-8").into();
    s.chain.rpc_url = Some(anvil.url().into());
    s.chain.chain_id = 11_155_111; // Sepolia's id, but the node is the local anvil
    s.secrets.signer_key = Some(format!("0x{}", "11".repeat(32)).into());
    s.secrets.patient_key = Some("p".repeat(32).into());
    let err = build(s).await.expect_err("wrong chain");
    assert!(err.to_string().contains("chain.chain_id"), "{err}");
    let provider = ProviderBuilder::new().connect_http(anvil.url().parse().expect("url"));
    assert_eq!(
        provider.get_block_number().await.expect("block"),
        0,
        "nothing was sent"
    );
}

fn numbered(n: usize, disease: &str) -> Value {
    let mut v = body(&format!("{n:08x}-1111-4000-8000-00000000beef"));
    v["disease"] = json!(disease);
    v
}

/// The review: anyone with the token could make the service write unlimited records (on a
/// public chain, draining the signer). New records are capped per source and in all; retries
/// of a record already taken do not count; a full backlog refuses new records.
#[tokio::test]
async fn new_records_are_capped_per_source_and_in_all() {
    let data = tempfile::tempdir().expect("tempdir");
    // 3 at once per source, 4 in all, then one every 20 s / 15 s: far more than this test
    // takes even on a loaded machine, so no allowance comes back meanwhile.
    let (base, _) = spawn_chain(data.path(), |s| {
        s.limits.records_per_minute_per_source = 3;
        s.limits.records_per_minute = 4;
    })
    .await;
    for n in 0..3 {
        let res = post(&base, &numbered(n, "diabetes"), true).await;
        assert_eq!(res.status(), 202, "record {n}: {:?}", res.text().await);
    }
    let res = post(&base, &numbered(3, "diabetes"), true).await;
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=21).contains(&retry), "{retry}");
    let problem: Value = res.json().await.expect("problem");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("3 records a minute from diabetes")),
        "{problem}"
    );
    // A retry of a record already taken is answered, not counted.
    assert_eq!(
        post(&base, &numbered(0, "diabetes"), true).await.status(),
        202
    );
    // Another source has its own allowance, within the total.
    assert_eq!(post(&base, &numbered(7, "heart"), true).await.status(), 202);
    let res = post(&base, &numbered(8, "heart"), true).await;
    assert_eq!(res.status(), 429);
    let problem: Value = res.json().await.expect("problem");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("4 records a minute in all")),
        "{problem}"
    );

    let data = tempfile::tempdir().expect("tempdir");
    let (base, _) = spawn_chain(data.path(), |s| s.limits.max_pending = 0).await;
    let res = post(&base, &numbered(10, "heart"), true).await;
    assert_eq!(res.status(), 503);
    let problem: Value = res.json().await.expect("problem");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("waiting to be sent") && d.contains("not accepted")),
        "{problem}"
    );
}

/// No batch could ever be sent with zero in flight: chain-svc does not start, and says which
/// setting (`chain.max_in_flight` is a `NonZeroUsize`, so no zero gets past reading it).
#[test]
fn a_zero_max_in_flight_is_refused_naming_its_setting() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chain-svc"))
        .env("CHAIN__CHAIN__MAX_IN_FLIGHT", "0")
        .env("CHAIN__SERVER__PORT", "0")
        .env("RUST_BACKTRACE", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    assert!(!out.status.success(), "max_in_flight = 0 started chain-svc");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("chain.max_in_flight"), "{stderr}");
}
