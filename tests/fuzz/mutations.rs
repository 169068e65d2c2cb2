//! How a valid file is damaged: a small seeded generator (the same cases on every run), byte
//! damage, structure-aware JSON damage and safetensors header damage.

// ---- a small seeded generator (the same cases on every run) ----

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        // SplitMix64.
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// ---- mutations ----

/// Values that break length, offset and dimension fields.
pub const FIELDS: [u64; 9] = [
    0,
    1,
    u64::MAX,
    i64::MAX as u64,
    (-1i64) as u64,
    (-7i64) as u64,
    1 << 31,
    1 << 40,
    0xffff_ffff,
];

/// Byte-level damage: flips, truncation, an 8- or 4-byte field overwritten, a run zeroed,
/// bytes inserted. `hot` is the length of the header region, hit half of the time.
pub fn damage_bytes(bytes: &[u8], hot: usize, rng: &mut Rng) -> (Vec<u8>, String) {
    let mut b = bytes.to_vec();
    let len = b.len();
    let at = |rng: &mut Rng| {
        if rng.below(2) == 0 && hot > 0 {
            rng.below(hot.min(len))
        } else {
            rng.below(len)
        }
    };
    match rng.below(6) {
        0 => {
            let n = 1 + rng.below(4);
            for _ in 0..n {
                let i = at(rng);
                b[i] ^= 1 << rng.below(8);
            }
            (b, format!("{n} bit flips"))
        }
        1 => {
            let len = rng.below(bytes.len());
            b.truncate(len);
            (b, format!("truncated to {len} bytes"))
        }
        2 => {
            let i = at(rng).min(b.len().saturating_sub(8));
            let v = *rng.pick(&FIELDS);
            let width = if rng.below(2) == 0 { 8 } else { 4 };
            let end = (i + width).min(b.len());
            b[i..end].copy_from_slice(&v.to_le_bytes()[..end - i]);
            (b, format!("{width}-byte field at {i} set to {v:#x}"))
        }
        3 => {
            let i = at(rng);
            let end = (i + 1 + rng.below(64)).min(b.len());
            b[i..end].fill(0);
            (b, format!("bytes {i}..{end} zeroed"))
        }
        4 => {
            let i = at(rng);
            let junk: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
            let n = junk.len();
            b.splice(i..i, junk);
            (b, format!("{n} bytes inserted at {i}"))
        }
        _ => {
            let i = at(rng);
            b[i] = 0xff;
            (b, format!("byte {i} set to 0xff (invalid UTF-8 in text)"))
        }
    }
}

/// A JSON value that a field does not expect.
pub fn wrong_value(rng: &mut Rng) -> serde_json::Value {
    use serde_json::json;
    match rng.below(10) {
        0 => json!(null),
        1 => json!(-1),
        2 => json!(1e300),
        3 => json!(u64::MAX),
        4 => json!(i64::MIN),
        5 => json!("\u{feff}x"),
        6 => json!([]),
        7 => json!({"a": {"b": [1, 2, 3]}}),
        8 => json!(0),
        _ => json!("x".repeat(1 << 16)),
    }
}

/// Structure-aware damage of a JSON document: a value replaced, a key removed, deep nesting.
pub fn damage_json(text: &str, rng: &mut Rng) -> (Vec<u8>, String) {
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(text) else {
        return damage_bytes(text.as_bytes(), text.len(), rng);
    };
    // Walk to a random node, as a JSON pointer.
    let mut path: Vec<String> = Vec::new();
    {
        let mut node = &v;
        for _ in 0..1 + rng.below(4) {
            node = match node {
                serde_json::Value::Object(m) if !m.is_empty() => {
                    let k = m.keys().nth(rng.below(m.len())).unwrap();
                    path.push(k.clone());
                    &m[k]
                }
                serde_json::Value::Array(a) if !a.is_empty() => {
                    let i = rng.below(a.len());
                    path.push(i.to_string());
                    &a[i]
                }
                _ => break,
            };
        }
    }
    let pointer: String = path
        .iter()
        .map(|p| format!("/{}", p.replace('~', "~0").replace('/', "~1")))
        .collect();
    let node = v.pointer_mut(&pointer).unwrap();
    let what = match rng.below(4) {
        0 => {
            let w = wrong_value(rng);
            let shown = w.to_string().chars().take(24).collect::<String>();
            *node = w;
            format!("/{} set to {shown}", path.join("/"))
        }
        1 => {
            *node = serde_json::Value::Null;
            format!("/{} nulled", path.join("/"))
        }
        2 => {
            // Deep nesting: serde_json's recursion limit must turn this into an error.
            let depth = 100_000;
            let s = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            return (s.into_bytes(), format!("array nested {depth} deep"));
        }
        _ => {
            if let serde_json::Value::Object(m) = &mut v {
                if let Some(k) = m.keys().nth(rng.below(m.len().max(1))).cloned() {
                    m.remove(&k);
                    return (
                        serde_json::to_vec(&v).unwrap(),
                        format!("top-level `{k}` removed"),
                    );
                }
            }
            return damage_bytes(text.as_bytes(), text.len(), rng);
        }
    };
    (serde_json::to_vec(&v).unwrap(), what)
}

/// Damage of a safetensors file's header: offsets, dtypes and shapes set wrong, tensors
/// duplicated / removed / added, the seal dropped, NaN written into the data.
pub fn damage_safetensors(bytes: &[u8], rng: &mut Rng) -> (Vec<u8>, String) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let names: Vec<String> = header
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    let name = rng.pick(&names).clone();
    let mut data = data.to_vec();
    let what = match rng.below(8) {
        0 => {
            let v = *rng.pick(&FIELDS);
            header[&name]["data_offsets"][rng.below(2)] = v.into();
            format!("`{name}` offset set to {v:#x}")
        }
        1 => {
            header[&name]["data_offsets"] = serde_json::json!([0, data.len()]);
            format!("`{name}` overlaps every tensor")
        }
        2 => {
            let d = rng.pick(&["F16", "BF16", "I64", "U8", "F64", "BOOL", "F8_E4M3", "XX"]);
            header[&name]["dtype"] = (*d).into();
            format!("`{name}` dtype set to {d}")
        }
        3 => {
            let shape = match rng.below(4) {
                0 => serde_json::json!([1u64 << 40, 1u64 << 40]),
                1 => serde_json::json!([-1, 4]),
                2 => serde_json::json!([0]),
                _ => serde_json::json!([3, 5, 7, 11]),
            };
            header[&name]["shape"] = shape.clone();
            format!("`{name}` shape set to {shape}")
        }
        4 => {
            header.remove(&name);
            format!("`{name}` removed")
        }
        5 => {
            let copy = header[&name].clone();
            header.insert(format!("{name}.extra"), copy);
            format!("`{name}` duplicated under another name")
        }
        6 => {
            let meta = header
                .get_mut("__metadata__")
                .and_then(|m| m.as_object_mut());
            if let Some(m) = meta {
                m.remove("offsite.sha256");
            }
            // Unsealed now: NaN / inf in the data must still be refused or be harmless.
            let off = header[&name]["data_offsets"][0].as_u64().unwrap() as usize;
            let v = if rng.below(2) == 0 {
                f32::NAN
            } else {
                f32::INFINITY
            };
            if header[&name]["dtype"] == "F32" && off + 4 <= data.len() {
                data[off..off + 4].copy_from_slice(&v.to_le_bytes());
            }
            format!("seal removed, `{name}`[0] set to {v}")
        }
        _ => {
            // A duplicate key in the raw JSON text (a map cannot hold one).
            let text = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
            let entry = format!("\"{name}\":{}", header[&name]);
            let dup = text.replacen('{', &format!("{{{entry},"), 1);
            let mut out = (dup.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(dup.as_bytes());
            out.extend_from_slice(&data);
            return (out, format!("`{name}` listed twice"));
        }
    };
    let text = serde_json::to_vec(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&data);
    (out, what)
}
