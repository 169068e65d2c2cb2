//! Python's string semantics that lm-eval's prompts rely on (whitespace, `str.capitalize`) and
//! HellaSwag's preprocessing, reproduced character for character.

/// Python's `str.isspace` for one character: Unicode White_Space plus the information
/// separators U+001C–U+001F, which Python also strips.
pub(super) fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.capitalize`: the first character title-cased, the rest lower-cased.
pub(super) fn py_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return String::new();
    };
    let mut out = py_title(first);
    // Lower-case the whole string so the rest is cased in context (final sigma), then drop the
    // first character's lower-case form, which the whole string's lower-casing starts with.
    let lower = s.to_lowercase();
    let first_lower_len: usize = first.to_lowercase().map(char::len_utf8).sum();
    out.push_str(&lower[first_lower_len..]);
    out
}

/// Python's title case of one character. It is the upper case but for the characters handled
/// here (Unicode's SpecialCasing and the few letters with a distinct title-case form).
fn py_title(c: char) -> String {
    let code = c as u32;
    let one = |v: u32| char::from_u32(v).map_or_else(String::new, String::from);
    match code {
        // Latin digraphs: DŽ/Dž/dž, LJ/Lj/lj, NJ/Nj/nj, DZ/Dz/dz all title-case to the middle form.
        0x1c4..=0x1c6 => one(0x1c5),
        0x1c7..=0x1c9 => one(0x1c8),
        0x1ca..=0x1cc => one(0x1cb),
        0x1f1..=0x1f3 => one(0x1f2),
        // Georgian Mkhedruli letters are their own title case (their upper case is Mtavruli).
        0x10d0..=0x10ff => c.to_string(),
        // Greek with iota subscript: title case keeps the subscript (ᾀ → ᾈ, ᾳ → ᾼ), where upper
        // case spells it as a capital iota.
        0x1f80..=0x1faf => one(code | 0x8),
        0x1fb3 | 0x1fbc => one(0x1fbc),
        0x1fc3 | 0x1fcc => one(0x1fcc),
        0x1ff3 | 0x1ffc => one(0x1ffc),
        // ŉ → ʼN, as in upper case.
        0x149 => c.to_uppercase().collect(),
        _ => {
            let upper: Vec<char> = c.to_uppercase().collect();
            match upper.split_last() {
                // ᾲ, ᾴ, ᾷ, ῂ, ῄ, ῇ, ῲ, ῴ, ῷ: the capital iota becomes a combining ypogegrammeni.
                Some((&'\u{399}', init))
                    if (0x1fb2..=0x1ff7).contains(&code) && !init.is_empty() =>
                {
                    init.iter().chain(['\u{345}'].iter()).collect()
                }
                // Multi-letter expansions (ß → Ss, ﬁ → Fi, և → Եւ): the rest lower-cased.
                _ => match upper.split_first() {
                    Some((head, rest)) => {
                        let rest: String = rest.iter().collect();
                        format!("{head}{}", rest.to_lowercase())
                    }
                    None => c.to_string(),
                },
            }
        }
    }
}

/// HellaSwag's `utils.preprocess`.
pub(super) fn hellaswag_preprocess(text: &str) -> String {
    let text = text.trim_matches(py_isspace).replace(" [title]", ". ");
    // re.sub(r"\[.*?\]", "", text): `.` does not match a newline.
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find(']');
        let newline = after.find('\n');
        match close {
            Some(close) if newline.is_none_or(|n| close < n) => rest = &after[close + 1..],
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}
