//! The bad-input battery, through the gateway to a real diabetes-svc (real models, real ONNX
//! Runtime): every malformed, mistyped, out-of-range or oversized JSON body, every wrong or
//! hostile image, every broken multipart form gets its 4xx with the problem shape (naming the
//! field where there is one), nothing panics, and the service still predicts afterwards.

use medchain_diabetes_svc::SPEC;
use medchain_tests::{Peer, assert_problem_for, models_dir, png, png_header_only, spawn_disease};
use serde_json::{Value, json};

const TABULAR: &str = "/api/v1/diabetes/predict/tabular";
const ADMIN_KEY: &str = "mk_test_admin_key_0123456789abcdef";
const RETINA: &str = "/api/v1/diabetes/predict/retina";

/// diabetes-svc behind an in-process gateway; returns the gateway's base URL.
async fn system() -> String {
    let svc = spawn_disease(SPEC, |s| {
        medchain_tests::secure(&mut s.auth, Peer::Diabetes)
    })
    .await;
    let mut g = medchain_tests::gateway_settings(&svc.address, &medchain_tests::closed_url());
    g.clients.rate_burst = std::num::NonZeroU32::new(10_000).expect("positive");
    g.clients.rate_per_second = std::num::NonZeroU32::new(10_000).expect("positive");
    g.clients.keys = vec![
        medchain_tests::test_key_entry(),
        medchain_tests::key_entry("test-admin", "admin", ADMIN_KEY),
    ];
    medchain_tests::spawn_gateway(g)
}

fn valid() -> Value {
    medchain_tests::sample_record("diabetes")
}

fn with(k: &str, v: Value) -> Vec<u8> {
    let mut b = valid();
    b[k] = v;
    serde_json::to_vec(&b).expect("json")
}

fn without(k: &str) -> Vec<u8> {
    let mut b = valid();
    b.as_object_mut().expect("object").remove(k);
    serde_json::to_vec(&b).expect("json")
}

/// The valid body's text with `glucose`'s value replaced by raw JSON text.
fn glucose_raw(raw: &str) -> Vec<u8> {
    let text = serde_json::to_string(&valid()).expect("json");
    text.replace("\"glucose\":148", &format!("\"glucose\":{raw}"))
        .into_bytes()
}

/// Checks one answer: 200 for inputs that must be served, else the problem (status, shape,
/// the field named when expected).
async fn expect(res: reqwest::Response, status: u16, field: Option<&str>, what: &str) {
    if status == 200 {
        let got = res.status().as_u16();
        assert_eq!(got, 200, "{what}: {}", res.text().await.unwrap_or_default());
    } else {
        assert_problem_for(res, status, field, what).await;
    }
}

async fn still_serving(client: &reqwest::Client, gw: &str) {
    let res = client
        .post(format!("{gw}{TABULAR}"))
        .json(&valid())
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200, "the service must still predict");
}

/// (what, content type, body, status, field named)
type JsonCase = (
    &'static str,
    Option<&'static str>,
    Vec<u8>,
    u16,
    Option<&'static str>,
);

#[tokio::test]
async fn forty_plus_bad_json_bodies_get_their_4xx() {
    let gw = system().await;
    let client = medchain_tests::signed_in_client(medchain_tests::TEST_API_KEY);
    let json_ct = Some("application/json");
    let long_id = "x".repeat(129);
    let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
    #[rustfmt::skip]
    let cases: Vec<JsonCase> = vec![
        // Syntax: 400.
        ("unclosed object", json_ct, b"{".to_vec(), 400, None),
        ("missing value", json_ct, b"{\"glucose\": }".to_vec(), 400, None),
        ("unclosed array", json_ct, b"[1, 2".to_vec(), 400, None),
        ("trailing comma", json_ct, b"{\"age\": 50,}".to_vec(), 400, None),
        ("single quotes", json_ct, b"{'age': 50}".to_vec(), 400, None),
        ("bare word", json_ct, b"nul".to_vec(), 400, None),
        ("NaN token", json_ct, glucose_raw("NaN"), 400, None),
        ("Infinity token", json_ct, glucose_raw("Infinity"), 400, None),
        ("-Infinity token", json_ct, glucose_raw("-Infinity"), 400, None),
        ("number beyond f64", json_ct, glucose_raw("1e400"), 400, None),
        ("empty body", json_ct, Vec::new(), 400, None),
        ("deep nesting", json_ct, glucose_raw(&deep), 400, None),
        ("invalid UTF-8", json_ct, b"{\"age\": \"\xff\xfe\"}".to_vec(), 400, None),
        ("hex number", json_ct, glucose_raw("0x94"), 400, None),
        ("trailing text", json_ct, [with("age", json!(50)), b" {}".to_vec()].concat(), 400, None),
        ("leading plus", json_ct, glucose_raw("+148"), 400, None),
        // Wrong types: 422 naming the field.
        ("number as string", json_ct, with("glucose", json!("148")), 422, Some("glucose")),
        ("boolean", json_ct, with("glucose", json!(true)), 422, Some("glucose")),
        ("array", json_ct, with("glucose", json!([148])), 422, Some("glucose")),
        ("object", json_ct, with("glucose", json!({"v": 148})), 422, Some("glucose")),
        ("word for a number", json_ct, with("age", json!("fifty")), 422, Some("age")),
        ("decimal as string", json_ct, with("bmi", json!("33.6")), 422, Some("bmi")),
        ("patient id as number", json_ct, with("patient_id", json!(12)), 422, Some("patient_id")),
        ("patient id as boolean", json_ct, with("patient_id", json!(true)), 422, Some("patient_id")),
        ("NaN as string", json_ct, with("glucose", json!("NaN")), 422, Some("glucose")),
        ("Infinity as string", json_ct, with("glucose", json!("Infinity")), 422, Some("glucose")),
        // Missing and null required fields.
        ("missing pregnancies", json_ct, without("pregnancies"), 422, Some("pregnancies")),
        ("missing glucose", json_ct, without("glucose"), 422, Some("glucose")),
        ("missing blood_pressure", json_ct, without("blood_pressure"), 422, Some("blood_pressure")),
        ("missing bmi", json_ct, without("bmi"), 422, Some("bmi")),
        ("missing pedigree", json_ct, without("diabetes_pedigree_function"), 422, Some("diabetes_pedigree_function")),
        ("missing age", json_ct, without("age"), 422, Some("age")),
        ("null glucose", json_ct, with("glucose", Value::Null), 422, Some("glucose")),
        ("null age", json_ct, with("age", Value::Null), 422, Some("age")),
        // Unknown fields.
        ("unknown field", json_ct, with("foo", json!(1)), 422, Some("foo")),
        ("wrong case", json_ct, with("Glucose", json!(148)), 422, Some("Glucose")),
        ("prototype key", json_ct, with("__proto__", json!({})), 422, Some("__proto__")),
        // Given twice: which one was meant is not for the service to guess.
        ("glucose twice", json_ct, glucose_raw("148,\"glucose\":90"), 422, Some("glucose")),
        ("patient id twice", json_ct, glucose_raw("148,\"patient_id\":\"a\",\"patient_id\":\"b\""), 422, Some("patient_id")),
        // Huge, negative, out of range, not whole.
        ("huge", json_ct, with("glucose", json!(1e308)), 422, Some("glucose")),
        ("huge integer", json_ct, glucose_raw("99999999999999999999"), 422, Some("glucose")),
        ("negative glucose", json_ct, with("glucose", json!(-1)), 422, Some("glucose")),
        ("age zero", json_ct, with("age", json!(0)), 422, Some("age")),
        ("age 121", json_ct, with("age", json!(121)), 422, Some("age")),
        ("bmi 500", json_ct, with("bmi", json!(500)), 422, Some("bmi")),
        ("half a pregnancy", json_ct, with("pregnancies", json!(2.5)), 422, Some("pregnancies")),
        ("negative pregnancies", json_ct, with("pregnancies", json!(-1)), 422, Some("pregnancies")),
        ("pedigree 3.5", json_ct, with("diabetes_pedigree_function", json!(3.5)), 422, Some("diabetes_pedigree_function")),
        ("insulin negative", json_ct, with("insulin", json!(-5)), 422, Some("insulin")),
        // Patient ids.
        ("empty patient id", json_ct, with("patient_id", json!("")), 422, Some("patient_id")),
        ("long patient id", json_ct, with("patient_id", json!(long_id)), 422, Some("patient_id")),
        ("control character", json_ct, with("patient_id", json!("MRN\u{7}1")), 422, Some("patient_id")),
        // Not an object.
        ("array body", json_ct, b"[1, 2, 3]".to_vec(), 422, None),
        ("string body", json_ct, b"\"text\"".to_vec(), 422, None),
        ("number body", json_ct, b"42".to_vec(), 422, None),
        ("null body", json_ct, b"null".to_vec(), 422, None),
        // Content type.
        ("text/plain", Some("text/plain"), serde_json::to_vec(&valid()).expect("json"), 415, None),
        ("no content type", None, serde_json::to_vec(&valid()).expect("json"), 415, None),
        ("form encoded", Some("application/x-www-form-urlencoded"), b"age=50".to_vec(), 415, None),
        ("multipart", Some("multipart/form-data; boundary=x"), b"--x--".to_vec(), 415, None),
        // Size.
        ("oversized", json_ct, format!("{{\"pad\": \"{}\"}}", "x".repeat(100_000)).into_bytes(), 413, None),
    ];
    assert!(cases.len() >= 40);
    for (what, ct, body, status, field) in cases {
        let mut rb = client.post(format!("{gw}{TABULAR}")).body(body);
        if let Some(ct) = ct {
            rb = rb.header("content-type", ct);
        }
        expect(rb.send().await.expect("send"), status, field, what).await;
    }
    still_serving(&client, &gw).await;
}

fn image(w: u32, h: u32, pixel: [u8; 3]) -> image::DynamicImage {
    image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(w, h, image::Rgb(pixel)))
}

fn jpeg(img: &image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.to_rgb8()
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("encode jpeg");
    out.into_inner()
}

#[tokio::test]
async fn forty_plus_bad_images_and_forms_get_their_4xx() {
    let gw = system().await;
    let client = medchain_tests::signed_in_client(medchain_tests::TEST_API_KEY);
    let dir = models_dir().join("examples");
    let example = std::fs::read(dir.join("retina/2-moderate_npdr-1.jpg")).expect("example");
    let example_png = std::fs::read(dir.join("retina/0-no_dr-0.png")).expect("example");
    let cmyk = std::fs::read(dir.join("edge/retina-cmyk.jpg")).expect("cmyk");
    let exif = std::fs::read(dir.join("edge/ecg-exif-rotated.jpg")).expect("exif");
    let gray =
        image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(64, 48, image::Luma([90])));
    let gray_alpha = image::DynamicImage::ImageLumaA8(image::GrayAlphaImage::from_pixel(
        64,
        48,
        image::LumaA([90, 40]),
    ));
    let rgba = image::DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
        64,
        48,
        image::Rgba([200, 80, 30, 128]),
    ));
    let rgb16 = image::DynamicImage::ImageRgb16(image::ImageBuffer::from_pixel(
        64,
        48,
        image::Rgb([50_000u16, 20_000, 9_000]),
    ));
    let gray16 = image::DynamicImage::ImageLuma16(image::ImageBuffer::from_pixel(
        64,
        48,
        image::Luma([40_000u16]),
    ));
    let mut bad_crc = example_png.clone();
    bad_crc[29] ^= 0xff; // inside IHDR's CRC
    let mut garbled = example.clone();
    for b in garbled.iter_mut().skip(600).take(4000) {
        *b = 0x5a;
    }
    let big = vec![0xffu8; 11 * 1024 * 1024];
    #[rustfmt::skip]
    let files: Vec<(&str, Vec<u8>, u16)> = vec![
        // Not an image we take: 415.
        ("text", b"this is not an image".to_vec(), 415),
        ("gif", b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;".to_vec(), 415),
        ("svg", b"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" height=\"10\"/>".to_vec(), 415),
        ("html", b"<!doctype html><html></html>".to_vec(), 415),
        ("bmp", b"BM\x3a\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00\x00\x00".to_vec(), 415),
        ("webp", b"RIFF\x24\x00\x00\x00WEBPVP8 ".to_vec(), 415),
        ("tiff", b"II*\x00\x08\x00\x00\x00".to_vec(), 415),
        ("pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3".to_vec(), 415),
        ("zip", b"PK\x03\x04\x14\x00\x00\x00".to_vec(), 415),
        ("random bytes", (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect(), 415),
        ("json", b"{\"image\": \"base64...\"}".to_vec(), 415),
        ("one byte", vec![0xff], 415),
        // Broken images: 422.
        ("empty", Vec::new(), 422),
        ("truncated jpeg", example[..example.len() / 3].to_vec(), 422),
        ("jpeg header only", example[..200].to_vec(), 422),
        ("jpeg markers only", b"\xff\xd8\xff\xd9".to_vec(), 422),
        ("truncated png", example_png[..example_png.len() / 2].to_vec(), 422),
        ("png signature only", b"\x89PNG\r\n\x1a\n".to_vec(), 422),
        ("png bad crc", bad_crc, 422),
        ("png zero size", png_header_only(0, 0), 422),
        ("garbled jpeg data", garbled, 422),
        // Too big: 413.
        ("decompression bomb png", png_header_only(50_000, 50_000), 413),
        ("wide bomb png", png_header_only(1_000_000, 100), 413),
        ("over the byte limit", big, 413),
        // Odd but valid: answered.
        ("1x1 png", png(image(1, 1, [1, 2, 3])), 200),
        ("1x1 jpeg", jpeg(&image(1, 1, [200, 100, 50])), 200),
        ("grayscale png", png(gray.clone()), 200),
        ("grayscale jpeg", jpeg(&gray), 200),
        ("grayscale + alpha", png(gray_alpha), 200),
        ("rgba png", png(rgba), 200),
        ("16-bit rgb png", png(rgb16), 200),
        ("16-bit gray png", png(gray16), 200),
        ("cmyk jpeg", cmyk, 200),
        ("exif-rotated jpeg", exif, 200),
        ("tall thin", png(image(8, 2000, [120, 60, 30])), 200),
        ("wide thin", png(image(2000, 8, [120, 60, 30])), 200),
    ];
    let n_files = files.len();
    for (what, bytes, status) in files {
        let form = reqwest::multipart::Form::new().part(
            "image",
            reqwest::multipart::Part::bytes(bytes).file_name("upload"),
        );
        let res = client
            .post(format!("{gw}{RETINA}"))
            .multipart(form)
            .send()
            .await
            .expect("send");
        let field = (status != 200 && status != 413).then_some("image");
        expect(res, status, field, what).await;
    }
    // Forms: missing part, two files, wrong field name, extra fields, bad patient id.
    let part = || reqwest::multipart::Part::bytes(example.clone()).file_name("x.jpg");
    let form = reqwest::multipart::Form::new;
    #[rustfmt::skip]
    let forms: Vec<(&str, reqwest::multipart::Form, u16, Option<&str>)> = vec![
        ("no image part", form().text("patient_id", "p1"), 422, Some("image")),
        ("empty form (RFC 2046 needs one part)", form(), 400, None),
        ("two images", form().part("image", part()).part("image", part()), 422, Some("image")),
        ("wrong field name", form().part("photo", part()), 422, Some("photo")),
        ("extra field", form().part("image", part()).text("note", "hello"), 422, Some("note")),
        ("empty patient id", form().part("image", part()).text("patient_id", ""), 422, Some("patient_id")),
        ("long patient id", form().part("image", part()).text("patient_id", "x".repeat(2000)), 422, Some("patient_id")),
        ("patient id as file", form().part("image", part()).part("patient_id", reqwest::multipart::Part::bytes(vec![0xff, 0xfe]).file_name("id")), 422, Some("patient_id")),
    ];
    let n_forms = forms.len();
    for (what, form, status, field) in forms {
        let res = client
            .post(format!("{gw}{RETINA}"))
            .multipart(form)
            .send()
            .await
            .expect("send");
        expect(res, status, field, what).await;
    }
    // Raw bodies: not multipart, no boundary, broken framing.
    #[rustfmt::skip]
    let raw: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        ("jpeg as the body", "image/jpeg", example.clone(), 415),
        ("json body", "application/json", b"{}".to_vec(), 415),
        ("no boundary", "multipart/form-data", b"--x\r\n\r\n--x--".to_vec(), 400),
        ("wrong boundary", "multipart/form-data; boundary=abc", b"--xyz\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc\r\n--xyz--\r\n".to_vec(), 400),
        ("unterminated part", "multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x\"\r\n\r\n\xff\xd8\xff".to_vec(), 400),
        ("no disposition", "multipart/form-data; boundary=b", b"--b\r\n\r\nabc\r\n--b--\r\n".to_vec(), 400),
    ];
    let n_raw = raw.len();
    for (what, ct, body, status) in raw {
        let res = client
            .post(format!("{gw}{RETINA}"))
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .expect("send");
        expect(res, status, None, what).await;
    }
    assert!(n_files >= 30 && n_files + n_forms + n_raw >= 40);
    still_serving(&client, &gw).await;
    let res = client
        .post(format!("{gw}{RETINA}"))
        .multipart(reqwest::multipart::Form::new().part("image", part()))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200, "the image model still serves");
}

/// The review: `/api/v1/*/models` showed anyone the model files' paths, the host they are
/// downloaded from and why a load failed. In public (a clinician here) it says what is
/// loaded; an admin sees everything.
#[tokio::test]
async fn model_state_says_where_and_why_to_admins_only() {
    let gw = system().await;
    let get = |key: &str| {
        let url = format!("{gw}/api/v1/diabetes/models");
        let client = medchain_tests::signed_in_client(key);
        async move {
            let res = client.get(url).send().await.expect("models");
            assert_eq!(res.status(), 200);
            res.json::<Value>().await.expect("json")
        }
    };
    let clinician = get(medchain_tests::TEST_API_KEY).await;
    let admin = get(ADMIN_KEY).await;
    let text = clinician.to_string();
    assert!(admin["models"][0]["file"].is_string(), "{admin}");
    assert!(admin["memory"].is_object(), "{admin}");
    for hidden in ["\"file\"", "\"memory\"", ".onnx"] {
        assert!(!text.contains(hidden), "{hidden} in {text}");
    }
    assert_eq!(
        clinician["models"][0]["state"], admin["models"][0]["state"],
        "the state is the same"
    );
}

/// Unloading is for admins: it drops the loaded models, each loads again on its next request;
/// a clinician is refused.
#[tokio::test]
async fn an_admin_unloads_the_models_and_they_load_again_on_use() {
    let gw = system().await;
    let (clinician, admin) = (
        medchain_tests::signed_in_client(medchain_tests::TEST_API_KEY),
        medchain_tests::signed_in_client(ADMIN_KEY),
    );
    let tabular = |m: &Value| -> Value {
        m["models"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["key"] == "tabular"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let models = || async {
        let res = admin
            .get(format!("{gw}/api/v1/diabetes/models"))
            .send()
            .await
            .expect("models");
        res.json::<Value>().await.expect("json")
    };
    let predict = || async {
        let res = clinician
            .post(format!("{gw}{TABULAR}"))
            .json(&valid())
            .send()
            .await
            .expect("predict");
        assert_eq!(res.status(), 200);
    };
    predict().await;
    let before = tabular(&models().await);
    assert_eq!(before["state"], "ready", "{before}");
    let refused = clinician
        .post(format!("{gw}/api/v1/diabetes/unload"))
        .send()
        .await
        .expect("unload");
    assert_eq!(refused.status(), 403);
    let res = admin
        .post(format!("{gw}/api/v1/diabetes/unload"))
        .send()
        .await
        .expect("unload");
    assert_eq!(res.status(), 200);
    let done: Value = res.json().await.expect("json");
    assert_eq!(tabular(&done)["unloaded"], true, "{done}");
    assert_eq!(tabular(&models().await)["state"], "unloaded");
    predict().await;
    let after = tabular(&models().await);
    assert_eq!(after["state"], "ready", "{after}");
    assert_eq!(
        after["loads"].as_u64(),
        before["loads"].as_u64().map(|n| n + 1),
        "loaded once more: {after}"
    );
}
