//! Chat templates: Jinja templates rendered with minijinja the way transformers'
//! `apply_chat_template` renders them with Jinja2.
//!
//! Reference: transformers `utils/chat_template_utils.py` (`_compile_jinja_template`): an
//! environment with `trim_blocks` and `lstrip_blocks`, globals `raise_exception` and
//! `strftime_now`, a `tojson` filter that is Python's `json.dumps(ensure_ascii=False)` (so
//! `", "`/`": "` separators and no HTML escaping, unlike minijinja's built-in), and the context
//! `messages`, `add_generation_prompt`, `bos_token`, `eos_token` plus the tokenizer's other named
//! special tokens. Python string methods (`.strip()`, `.startswith()`, ...) come from
//! minijinja-contrib's `pycompat`.
//!
//! Deviation: `strftime_now` formats UTC time (Jinja2 uses the local zone) and supports the
//! directives templates use (%Y %m %d %e %B %b %H %M %S %A %a %%).

use std::path::Path;

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};
use serde::Serialize;

use crate::{read_json_if_exists, Error, Result, Tokenizer};

const TEMPLATE_NAME: &str = "chat_template";

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template and the special-token strings it may refer to.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

fn template_err(source: minijinja::Error) -> Error {
    Error::Template {
        name: TEMPLATE_NAME.to_string(),
        source,
    }
}

/// `chat_template` from a tokenizer_config.json: a string, or a list of `{name, template}` from
/// which "default" is chosen. `None` when absent.
pub(crate) fn template_from_config_value(
    value: Option<&serde_json::Value>,
) -> Result<Option<String>> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(items)) => {
            let default = items
                .iter()
                .find(|item| item.get("name").and_then(|n| n.as_str()) == Some("default"));
            match default
                .and_then(|d| d.get("template"))
                .and_then(|t| t.as_str())
            {
                Some(t) => Ok(Some(t.to_string())),
                None => Err(Error::NoChatTemplate(
                    "the chat_template list has no \"default\" entry".to_string(),
                )),
            }
        }
        Some(other) => Err(Error::NoChatTemplate(format!(
            "chat_template is neither a string nor a list: {other}"
        ))),
    }
}

impl ChatTemplate {
    /// Compiles `source`. `bos_token`/`eos_token` are what the template sees as those variables.
    pub fn new(
        source: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME.to_string(), source.to_string())
            .map_err(template_err)?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
            bos_token: bos_token.map(str::to_string),
            eos_token: eos_token.map(str::to_string),
        })
    }

    /// The template shipped with a tokenizer (GGUF or tokenizer_config.json), with its bos/eos.
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Result<ChatTemplate> {
        let source = tokenizer
            .chat_template()
            .ok_or_else(|| Error::NoChatTemplate("the tokenizer has none".to_string()))?;
        ChatTemplate::new(source, tokenizer.bos_token(), tokenizer.eos_token())
    }

    /// Reads `chat_template`, `bos_token` and `eos_token` from a tokenizer_config.json.
    pub fn from_tokenizer_config(path: impl AsRef<Path>) -> Result<ChatTemplate> {
        let path = path.as_ref();
        let config = read_json_if_exists(path)?.ok_or_else(|| Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
        })?;
        let source = template_from_config_value(config.get("chat_template"))?.ok_or_else(|| {
            Error::NoChatTemplate(format!("{} has no chat_template", path.display()))
        })?;
        let token = |name: &str| -> Option<String> {
            let v = config.get(name)?;
            v.as_str()
                .or_else(|| v.get("content")?.as_str())
                .map(str::to_string)
        };
        ChatTemplate::new(
            &source,
            token("bos_token").as_deref(),
            token("eos_token").as_deref(),
        )
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the conversation; `add_generation_prompt` asks the template to open the
    /// assistant's turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self.env.get_template(TEMPLATE_NAME).map_err(template_err)?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_deref().unwrap_or(""),
            eos_token => self.eos_token.as_deref().unwrap_or(""),
        };
        template.render(ctx).map_err(template_err)
    }
}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// Python `json.dumps(value, ensure_ascii=False, indent=indent)`.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    write_python_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn write_python_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                write_python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    strftime(secs, &format)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Formats a UTC unix time; unknown directives are kept verbatim.
fn strftime(secs: u64, format: &str) -> String {
    let days = (secs / 86_400) as i64;
    let (h, m, s) = ((secs % 86_400) / 3600, (secs % 3600) / 60, secs % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday.
    let month_name = MONTHS[(month - 1) as usize];

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('M') => out.push_str(&format!("{m:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_dates() {
        assert_eq!(
            strftime(0, "%d %b %Y %H:%M:%S %A"),
            "01 Jan 1970 00:00:00 Thursday"
        );
        // 2024-02-29 12:34:56 UTC
        assert_eq!(
            strftime(1_709_210_096, "%Y-%m-%d %H:%M:%S %a %B %%"),
            "2024-02-29 12:34:56 Thu February %"
        );
    }

    #[test]
    fn python_json() {
        let v = serde_json::json!({"a": [1, "é<"], "b": {}});
        let mut out = String::new();
        write_python_json(&v, None, 0, &mut out);
        assert_eq!(out, r#"{"a": [1, "é<"], "b": {}}"#);
        let mut out = String::new();
        write_python_json(&v, Some(2), 0, &mut out);
        assert_eq!(
            out,
            "{\n  \"a\": [\n    1,\n    \"é<\"\n  ],\n  \"b\": {}\n}"
        );
    }

    #[test]
    fn renders_with_python_methods_and_errors() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{{ bos_token }}{{ m.role | upper }}: {{ m.content.strip() }}\n{% endfor %}\
             {% if add_generation_prompt %}ASSISTANT:{% endif %}",
            Some("<s>"),
            None,
        )
        .expect("compile");
        let out = t
            .render(&[ChatMessage::new("user", "  hi  ")], true)
            .expect("render");
        assert_eq!(out, "<s>USER: hi\nASSISTANT:");
        let t = ChatTemplate::new("{{ raise_exception('nope') }}", None, None).expect("compile");
        let err = t.render(&[], false).expect_err("raises");
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(ChatTemplate::new("{% if %}", None, None).is_err());
    }

    #[test]
    fn config_list_picks_default() {
        let v = serde_json::json!([{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]);
        assert_eq!(
            template_from_config_value(Some(&v)).expect("ok").as_deref(),
            Some("D")
        );
        let v = serde_json::json!([{"name": "tool_use", "template": "T"}]);
        assert!(template_from_config_value(Some(&v)).is_err());
    }
}
