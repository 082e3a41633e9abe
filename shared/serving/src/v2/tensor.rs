//! Tensor contents: the protocol's datatypes, `data` in JSON (row-major, flat or nested), the
//! binary tensor data extension's raw little-endian bytes and `BYTES` elements
//! (each a 4-byte little-endian length, then its bytes), read into one form.

use base64::Engine as _;

use super::V2Error;
use super::wire::{JsonData, RequestInput};
use crate::inference::OutputData;

/// The protocol's tensor datatypes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datatype {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    F32,
    F64,
    Bytes,
}

impl Datatype {
    pub fn parse(s: &str) -> Option<Datatype> {
        Some(match s {
            "BOOL" => Datatype::Bool,
            "UINT8" => Datatype::U8,
            "UINT16" => Datatype::U16,
            "UINT32" => Datatype::U32,
            "UINT64" => Datatype::U64,
            "INT8" => Datatype::I8,
            "INT16" => Datatype::I16,
            "INT32" => Datatype::I32,
            "INT64" => Datatype::I64,
            "FP16" => Datatype::F16,
            "FP32" => Datatype::F32,
            "FP64" => Datatype::F64,
            "BYTES" => Datatype::Bytes,
            _ => return None,
        })
    }

    /// Bytes per element in binary form (`None` for `BYTES`, whose elements carry their length).
    fn size(self) -> Option<usize> {
        Some(match self {
            Datatype::Bool | Datatype::U8 | Datatype::I8 => 1,
            Datatype::U16 | Datatype::I16 | Datatype::F16 => 2,
            Datatype::U32 | Datatype::I32 | Datatype::F32 => 4,
            Datatype::U64 | Datatype::I64 | Datatype::F64 => 8,
            Datatype::Bytes => return None,
        })
    }

    /// A number type a model's float input can be given in.
    pub fn is_number(self) -> bool {
        !matches!(self, Datatype::Bool | Datatype::F16 | Datatype::Bytes)
    }
}

/// An input's elements, read from JSON or binary data.
#[derive(Debug)]
pub enum Elements {
    /// FP32, as sent (binary) or as written (JSON, rounded to float32 as the datatype says).
    F32(Vec<f32>),
    /// Any other number type, as f64 (exact for integers up to 2^53).
    Numbers(Vec<f64>),
    /// `BYTES` elements.
    Bytes(Vec<Vec<u8>>),
}

/// How many elements `shape` holds; an error for a negative dimension.
pub fn element_count(input: &RequestInput) -> Result<usize, V2Error> {
    input.shape.iter().try_fold(1usize, |n, &d| {
        let d = usize::try_from(d).map_err(|_| {
            V2Error::bad(format!(
                "input `{}`: shape {:?} has a negative dimension",
                input.name, input.shape
            ))
        })?;
        n.checked_mul(d)
            .ok_or_else(|| V2Error::bad(format!("input `{}`: shape is too large", input.name)))
    })
}

/// The elements of `input`, from its `data` or from `binary` (its bytes after the JSON); a
/// shape of more than `max_elements` is refused before any is read.
pub fn read(
    input: &RequestInput,
    binary: Option<&[u8]>,
    max_elements: usize,
) -> Result<Elements, V2Error> {
    let name = &input.name;
    let datatype = Datatype::parse(&input.datatype).ok_or_else(|| {
        V2Error::bad(format!(
            "input `{name}`: unknown datatype `{}`",
            input.datatype
        ))
    })?;
    let count = element_count(input)?;
    if count > max_elements {
        return Err(V2Error::bad(format!(
            "input `{name}`: shape {:?} holds {count} elements; a batch of v2.max_batch of this \
             model takes at most {max_elements}",
            input.shape
        )));
    }
    let elements = match (binary, &input.data) {
        (Some(_), Some(_)) => {
            return Err(V2Error::bad(format!(
                "input `{name}` has both `data` and binary data"
            )));
        }
        (None, None) => {
            return Err(V2Error::bad(format!(
                "input `{name}` has no `data` and no `binary_data_size`"
            )));
        }
        (Some(bytes), None) => {
            // Checked before converting: an element may take more room converted (UINT8 → f64).
            if let Some(size) = datatype.size()
                && bytes.len() != count * size
            {
                return Err(V2Error::bad(format!(
                    "input `{name}`: shape {:?} holds {count} {} elements ({} bytes); the \
                     binary data has {} bytes",
                    input.shape,
                    input.datatype,
                    count * size,
                    bytes.len()
                )));
            }
            from_binary(input, datatype, bytes)?
        }
        (None, Some(data)) => from_json(input, datatype, data)?,
    };
    let got = match &elements {
        Elements::F32(v) => v.len(),
        Elements::Numbers(v) => v.len(),
        Elements::Bytes(v) => v.len(),
    };
    if got != count {
        return Err(V2Error::bad(format!(
            "input `{name}`: shape {:?} holds {count} elements, the data has {got}",
            input.shape
        )));
    }
    Ok(elements)
}

fn unsupported(input: &RequestInput) -> V2Error {
    V2Error::bad(format!(
        "input `{}`: datatype {} is not taken; send FP32 (or FP64 or an integer type) numbers, \
         or BYTES for an encoded image",
        input.name, input.datatype
    ))
}

fn from_json(
    input: &RequestInput,
    datatype: Datatype,
    data: &JsonData,
) -> Result<Elements, V2Error> {
    let name = &input.name;
    if datatype == Datatype::Bytes {
        if data.strings.len() != data.len() {
            return Err(V2Error::bad(format!(
                "input `{name}`: BYTES data must be strings (base64 of each element's bytes)"
            )));
        }
        let engine = base64::engine::general_purpose::STANDARD;
        let bytes = data
            .strings
            .iter()
            .enumerate()
            .map(|(i, s)| {
                engine.decode(s).map_err(|e| {
                    V2Error::bad(format!(
                        "input `{name}`: element {i} is not base64 ({e}); in JSON, BYTES \
                         elements are base64 — or send them as binary data"
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        return Ok(Elements::Bytes(bytes));
    }
    if !datatype.is_number() {
        return Err(unsupported(input));
    }
    if data.numbers.len() != data.len() {
        return Err(V2Error::bad(format!(
            "input `{name}`: {} data must be numbers",
            input.datatype
        )));
    }
    let whole = !matches!(datatype, Datatype::F32 | Datatype::F64);
    if whole && let Some(x) = data.numbers.iter().find(|x| x.fract() != 0.0) {
        return Err(V2Error::bad(format!(
            "input `{name}`: {x} is not an {} value",
            input.datatype
        )));
    }
    Ok(if datatype == Datatype::F32 {
        Elements::F32(data.numbers.iter().map(|&x| x as f32).collect())
    } else {
        Elements::Numbers(data.numbers.clone())
    })
}

fn from_binary(
    input: &RequestInput,
    datatype: Datatype,
    bytes: &[u8],
) -> Result<Elements, V2Error> {
    let name = &input.name;
    let Some(size) = datatype.size() else {
        return bytes_elements(name, bytes).map(Elements::Bytes);
    };
    if !datatype.is_number() {
        return Err(unsupported(input));
    }
    if !bytes.len().is_multiple_of(size) {
        return Err(V2Error::bad(format!(
            "input `{name}`: {} bytes of binary data is not a whole number of {size}-byte \
             elements",
            bytes.len()
        )));
    }
    let chunks = bytes.chunks_exact(size);
    let arr = |c: &[u8]| -> [u8; 8] {
        let mut a = [0u8; 8];
        a[..c.len()].copy_from_slice(c);
        a
    };
    let numbers = match datatype {
        Datatype::F32 => {
            let floats = chunks
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            return Ok(Elements::F32(floats));
        }
        Datatype::F64 => chunks.map(|c| f64::from_le_bytes(arr(c))).collect(),
        Datatype::U8 => chunks.map(|c| f64::from(c[0])).collect(),
        Datatype::I8 => chunks.map(|c| f64::from(c[0] as i8)).collect(),
        Datatype::U16 => chunks
            .map(|c| f64::from(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        Datatype::I16 => chunks
            .map(|c| f64::from(i16::from_le_bytes([c[0], c[1]])))
            .collect(),
        Datatype::U32 => chunks
            .map(|c| f64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        Datatype::I32 => chunks
            .map(|c| f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        Datatype::U64 => chunks.map(|c| u64::from_le_bytes(arr(c)) as f64).collect(),
        Datatype::I64 => chunks.map(|c| i64::from_le_bytes(arr(c)) as f64).collect(),
        Datatype::Bool | Datatype::F16 | Datatype::Bytes => {
            return Err(unsupported(input));
        }
    };
    Ok(Elements::Numbers(numbers))
}

/// `BYTES` elements in binary form: each a 4-byte little-endian length, then its bytes.
fn bytes_elements(name: &str, mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, V2Error> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let truncated = || {
            V2Error::bad(format!(
                "input `{name}`: BYTES element {} is cut short (each is a 4-byte little-endian \
                 length, then that many bytes)",
                out.len()
            ))
        };
        let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(truncated)?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(truncated());
        }
        let (element, rest) = rest.split_at(len);
        out.push(element.to_vec());
        bytes = rest;
    }
    Ok(out)
}

/// The protocol's datatype of an output.
pub fn output_datatype(data: &OutputData) -> &'static str {
    match data {
        OutputData::F32(_) => "FP32",
        OutputData::I64(_) => "INT64",
    }
}

/// An output as JSON `data` (flat, row-major).
pub fn output_json(data: &OutputData) -> serde_json::Value {
    match data {
        OutputData::F32(v) => v.iter().map(|&x| serde_json::json!(x)).collect(),
        OutputData::I64(v) => v.iter().map(|&x| serde_json::json!(x)).collect(),
    }
}

/// An output as binary data (little-endian).
pub fn output_bytes(data: &OutputData) -> Vec<u8> {
    match data {
        OutputData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        OutputData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: serde_json::Value) -> RequestInput {
        serde_json::from_value(json).expect("input")
    }

    #[test]
    fn nested_and_flat_json_data_read_alike() {
        let flat = input(serde_json::json!({
            "name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2.5, 3, 4]
        }));
        let nested = input(serde_json::json!({
            "name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2.5], [3, 4]]
        }));
        for i in [flat, nested] {
            match read(&i, None, 1000).expect("read") {
                Elements::F32(v) => assert_eq!(v, [1.0, 2.5, 3.0, 4.0]),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_shape_that_does_not_hold_the_data_is_named() {
        let i = input(serde_json::json!({
            "name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4]
        }));
        let e = read(&i, None, 1000).expect_err("count");
        assert!(
            e.message().contains("holds 6 elements, the data has 4"),
            "{e}"
        );
        let i = input(serde_json::json!({
            "name": "x", "shape": [2], "datatype": "INT32", "data": [1, 2.5]
        }));
        assert!(
            read(&i, None, 1000)
                .expect_err("int")
                .message()
                .contains("2.5")
        );
    }

    /// A body of many small numbers is refused while it is parsed (each would take 8 bytes in
    /// memory for the 2 it takes in the body); a shape over the limit, before anything is read;
    /// binary data of another size than its shape, before it is converted.
    #[test]
    fn what_a_request_may_hold_is_bounded_while_it_is_read() {
        let body = format!(
            r#"{{"inputs": [{{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [{}0]}}]}}"#,
            "0,".repeat(100_000)
        );
        let headers = actix_web::http::header::HeaderMap::new();
        let e = super::super::binary::split(&headers, body.clone().into(), 64).expect_err("held");
        assert!(e.message().contains("v2.max_batch"), "{e}");
        assert!(super::super::binary::split(&headers, body.into(), 200_000).is_ok());
        let i = input(serde_json::json!({"name": "x", "shape": [1000, 1000], "datatype": "UINT8"}));
        let e = read(&i, Some(&[0u8; 16]), 64).expect_err("shape over the limit");
        assert!(e.message().contains("at most 64"), "{e}");
        let i = input(serde_json::json!({"name": "x", "shape": [8], "datatype": "UINT8"}));
        let e = read(&i, Some(&[0u8; 16]), 64).expect_err("size");
        assert!(e.message().contains("16 bytes"), "{e}");
    }

    #[test]
    fn binary_numbers_and_bytes_elements_are_read() {
        let i = input(serde_json::json!({"name": "x", "shape": [2], "datatype": "FP32"}));
        let bytes: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        match read(&i, Some(&bytes), 1000).expect("fp32") {
            Elements::F32(v) => assert_eq!(v, [1.5, -2.0]),
            other => panic!("{other:?}"),
        }
        let i = input(serde_json::json!({"name": "x", "shape": [2], "datatype": "BYTES"}));
        let mut b = Vec::new();
        for e in [&b"abc"[..], b""] {
            b.extend_from_slice(&(e.len() as u32).to_le_bytes());
            b.extend_from_slice(e);
        }
        match read(&i, Some(&b), 1000).expect("bytes") {
            Elements::Bytes(v) => assert_eq!(v, [b"abc".to_vec(), Vec::new()]),
            other => panic!("{other:?}"),
        }
        let e = read(&i, Some(&b[..5]), 1000).expect_err("cut short");
        assert!(e.message().contains("cut short"), "{e}");
    }
}
