//! Chat templates: rendering a Hugging Face Jinja chat template as transformers does, in
//! minijinja (trim_blocks, lstrip_blocks, `raise_exception`, a Python-style `tojson` and the
//! Python string and dict methods templates call).

use minijinja::value::{from_args, Kwargs, Value as JinjaValue, ValueKind};
use minijinja::{Environment, ErrorKind, State};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One message of a chat, as chat templates expect it (`{"role": ..., "content": ...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who speaks: usually `system`, `user` or `assistant`.
    pub role: String,
    /// What is said.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Renders a Hugging Face chat template. The environment mimics transformers' (`trim_blocks`,
/// `lstrip_blocks`, `raise_exception`, a Python-style `tojson`, and the common Python string and
/// dict methods that templates call), because templates are written for Jinja2, not minijinja.
pub fn render_chat_template(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    special_tokens: &[(&str, &str)],
) -> std::result::Result<String, minijinja::Error> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<JinjaValue, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_filter("tojson", tojson);
    env.set_unknown_method_callback(python_method);
    let mut ctx: BTreeMap<&str, JinjaValue> = BTreeMap::new();
    ctx.insert("messages", JinjaValue::from_serialize(messages));
    ctx.insert(
        "add_generation_prompt",
        JinjaValue::from(add_generation_prompt),
    );
    // Only tokens the model has are defined, as in transformers, so `{{ bos_token }}` renders
    // as nothing (not "none") when there is no BOS.
    for (name, content) in special_tokens {
        ctx.insert(name, JinjaValue::from(*content));
    }
    let tmpl = env.template_from_str(template)?;
    tmpl.render(ctx)
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`, which transformers' `tojson`
/// is: `", "` and `": "` separators without indent.
fn tojson(value: &JinjaValue, kwargs: Kwargs) -> std::result::Result<String, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let res = match indent {
        Some(n) => {
            let spaces = vec![b' '; n];
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&spaces);
            serde::Serialize::serialize(
                value,
                &mut serde_json::Serializer::with_formatter(&mut out, fmt),
            )
        }
        None => serde::Serialize::serialize(
            value,
            &mut serde_json::Serializer::with_formatter(&mut out, PythonJson),
        ),
    };
    res.map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    String::from_utf8(out)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))
}

/// serde_json formatter with Python's default separators.
struct PythonJson;

/// `json.dumps`' item separator: ", " before every element but the first.
fn python_separator<W: ?Sized + std::io::Write>(w: &mut W, first: bool) -> std::io::Result<()> {
    if first {
        Ok(())
    } else {
        w.write_all(b", ")
    }
}

impl serde_json::ser::Formatter for PythonJson {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        python_separator(w, first)
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        python_separator(w, first)
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// The Python methods chat templates commonly call on strings and dicts.
fn python_method(
    state: &State,
    value: &JinjaValue,
    method: &str,
    args: &[JinjaValue],
) -> std::result::Result<JinjaValue, minijinja::Error> {
    if let Some(s) = value.as_str() {
        let strip_set =
            |args: &[JinjaValue]| -> std::result::Result<Option<String>, minijinja::Error> {
                let (chars,): (Option<String>,) = from_args(args)?;
                Ok(chars)
            };
        let out: JinjaValue = match method {
            "strip" | "lstrip" | "rstrip" => {
                let chars = strip_set(args)?;
                let is_strip = |c: char| match &chars {
                    Some(set) => set.contains(c),
                    None => c.is_whitespace(),
                };
                let r = match method {
                    "strip" => s.trim_matches(is_strip),
                    "lstrip" => s.trim_start_matches(is_strip),
                    _ => s.trim_end_matches(is_strip),
                };
                r.into()
            }
            "startswith" | "endswith" => {
                let (prefix,): (String,) = from_args(args)?;
                if method == "startswith" {
                    s.starts_with(&prefix).into()
                } else {
                    s.ends_with(&prefix).into()
                }
            }
            "upper" => {
                from_args::<()>(args)?;
                s.to_uppercase().into()
            }
            "lower" => {
                from_args::<()>(args)?;
                s.to_lowercase().into()
            }
            "replace" => {
                let (from, to): (String, String) = from_args(args)?;
                s.replace(&from, &to).into()
            }
            "split" => {
                let (sep, maxsplit): (Option<String>, Option<i64>) = from_args(args)?;
                let max = maxsplit.filter(|m| *m >= 0).map(|m| m as usize + 1);
                let parts: Vec<String> = match (&sep, max) {
                    (Some(sep), Some(n)) => s.splitn(n, sep.as_str()).map(str::to_string).collect(),
                    (Some(sep), None) => s.split(sep.as_str()).map(str::to_string).collect(),
                    (None, _) => s.split_whitespace().map(str::to_string).collect(),
                };
                parts.into()
            }
            "title" | "capitalize" => state.apply_filter(method, std::slice::from_ref(value))?,
            _ => return Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
        };
        return Ok(out);
    }
    if value.kind() == ValueKind::Map {
        return match method {
            "items" => state.apply_filter("items", std::slice::from_ref(value)),
            "keys" => {
                from_args::<()>(args)?;
                Ok(JinjaValue::from(value.try_iter()?.collect::<Vec<_>>()))
            }
            "values" => {
                from_args::<()>(args)?;
                let values = value
                    .try_iter()?
                    .map(|k| value.get_item(&k))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Ok(JinjaValue::from(values))
            }
            "get" => {
                let (key, default): (JinjaValue, Option<JinjaValue>) = from_args(args)?;
                let v = value.get_item(&key)?;
                Ok(if v.is_undefined() {
                    default.unwrap_or(JinjaValue::from(()))
                } else {
                    v
                })
            }
            _ => Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
        };
    }
    Err(minijinja::Error::from(ErrorKind::UnknownMethod))
}
