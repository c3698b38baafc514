//! The chat model's fields of `message:send` (../shared/PROTOCOL.md, "Chat model"):
//! `mentions` and `attachments`, checked and normalised before anything is appended.

use serde_json::Value;
use teamchat_shared::event::Attachment;
use teamchat_shared::ids::is_valid_id;

/// Most users one message mentions (after duplicates are dropped).
pub const MAX_MENTIONS: usize = 50;
/// Most files one message links to.
pub const MAX_ATTACHMENTS: usize = 10;
/// Longest attachment URL, in bytes.
const MAX_URL: usize = 2_048;
/// Longest attachment name, in bytes.
const MAX_NAME: usize = 255;

/// `parent`: the seq of the thread's top-level message (whether it is one the script
/// checks), or none.
pub fn parent(value: Option<Value>) -> Result<Option<u64>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_u64() {
            Some(seq) if seq >= 1 && seq <= i64::MAX as u64 => Ok(Some(seq)),
            _ => Err("parent must be a message seq".into()),
        },
    }
}

/// `mentions`: user ids, duplicates dropped (first kept), at most `MAX_MENTIONS`.
pub fn mentions(value: Option<Value>) -> Result<Vec<String>, String> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err("mentions must be an array of user ids".into()),
    };
    let mut mentions: Vec<String> = Vec::new();
    for item in items {
        let Value::String(user) = item else {
            return Err("mentions must be an array of user ids".into());
        };
        if !is_valid_id(&user) {
            return Err("a mention is not a valid user id".into());
        }
        if !mentions.contains(&user) {
            if mentions.len() == MAX_MENTIONS {
                return Err(format!("more than {MAX_MENTIONS} mentions"));
            }
            mentions.push(user);
        }
    }
    Ok(mentions)
}

/// `attachments`: at most `MAX_ATTACHMENTS` objects, each checked; unknown keys dropped.
pub fn attachments(value: Option<Value>) -> Result<Vec<Attachment>, String> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err("attachments must be an array".into()),
    };
    if items.len() > MAX_ATTACHMENTS {
        return Err(format!("more than {MAX_ATTACHMENTS} attachments"));
    }
    items.into_iter().map(attachment).collect()
}

fn attachment(value: Value) -> Result<Attachment, String> {
    let Value::Object(mut fields) = value else {
        return Err("an attachment must be an object".into());
    };
    let mut text = |key: &str| match fields.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(format!("attachment {key} must be a string")),
    };
    let url = text("url")?.ok_or("an attachment needs a url")?;
    let name = text("name")?.ok_or("an attachment needs a name")?;
    let mime = text("mime")?.ok_or("an attachment needs a mime type")?;
    let thumb_url = text("thumb_url")?;
    let mut number = |key: &str| match fields.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("attachment {key} must be an integer ≥ 0")),
    };
    let size = number("size")?.ok_or("an attachment needs a size")?;
    let (width, height) = (number("width")?, number("height")?);
    check_url(&url)?;
    if let Some(thumb_url) = &thumb_url {
        check_url(thumb_url)?;
    }
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(format!(
            "an attachment name is 1..{MAX_NAME} bytes, without control characters"
        ));
    }
    if !is_mime_type(&mime) {
        return Err("an attachment mime is a type/subtype".into());
    }
    Ok(Attachment {
        url,
        name,
        mime,
        size,
        width,
        height,
        thumb_url,
    })
}

/// An `https://` URL a browser can fetch as it is: no other scheme (`javascript:`,
/// `data:`, `http:`), nothing a parser would read differently, at most `MAX_URL` bytes.
fn check_url(text: &str) -> Result<(), String> {
    let refused = || Err("attachment URLs are https:// URLs of at most 2048 bytes".to_owned());
    // The text as written, not as a parser would mend it (`https:host`, `https:/\host`).
    let https = text
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
    if !https || text.len() > MAX_URL || text.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return refused();
    }
    match url::Url::parse(text) {
        Ok(url) if url.scheme() == "https" && url.host().is_some() => Ok(()),
        _ => refused(),
    }
}

/// `type/subtype`, each a token of RFC 6838's restricted names.
fn is_mime_type(text: &str) -> bool {
    let token = |part: &str| {
        (1..=127).contains(&part.len())
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    matches!(text.split_once('/'), Some((kind, sub)) if token(kind) && token(sub))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mentions_are_ids_without_duplicates() {
        assert_eq!(mentions(None).unwrap(), Vec::<String>::new());
        assert_eq!(
            mentions(Some(json!(["ann", "ben", "ann"]))).unwrap(),
            ["ann", "ben"]
        );
        let many: Vec<String> = (0..10_000).map(|n| format!("u{n}")).collect();
        assert!(mentions(Some(json!(many))).is_err());
        let repeated = vec!["ann"; 10_000];
        assert_eq!(mentions(Some(json!(repeated))).unwrap(), ["ann"]);
        for bad in [json!("ann"), json!([1]), json!(["a b"]), json!([""])] {
            assert!(mentions(Some(bad.clone())).is_err(), "{bad}");
        }
    }

    #[test]
    fn attachments_are_checked_and_normalised() {
        let good = json!({"url": "https://files.example.com/a.png", "name": "a.png",
            "mime": "image/png", "size": 1234, "width": 64, "height": 48,
            "thumb_url": "https://files.example.com/a-thumb.png", "extra": "dropped"});
        let parsed = attachments(Some(json!([good]))).unwrap();
        assert_eq!(parsed[0].width, Some(64));
        assert_eq!(serde_json::to_value(&parsed[0]).unwrap().get("extra"), None);
        let with = |key: &str, value: Value| {
            let mut attachment = good.clone();
            attachment[key] = value;
            attachments(Some(json!([attachment])))
        };
        for (key, value) in [
            ("url", json!("javascript:alert(1)")),
            ("url", json!("http://files.example.com/a.png")),
            ("url", json!("data:text/html,hi")),
            ("url", json!("https://files.example.com/a b.png")),
            ("url", json!("https:files.example.com/a.png")),
            ("url", json!("https:/\\files.example.com/a.png")),
            ("url", json!(format!("https://e.com/{}", "a".repeat(2_048)))),
            ("thumb_url", json!("javascript:alert(1)")),
            ("name", json!("")),
            ("name", json!("a".repeat(256))),
            ("name", json!("a\u{0}b")),
            ("mime", json!("image")),
            ("mime", json!("image/png; x=\"<script>\"")),
            ("size", json!(-1)),
            ("size", json!(1.5)),
            ("width", json!("64")),
        ] {
            assert!(with(key, value.clone()).is_err(), "{key}: {value}");
        }
        assert!(attachments(Some(json!(vec![good.clone(); 11]))).is_err());
        assert_eq!(attachments(Some(json!(vec![good; 10]))).unwrap().len(), 10);
    }
}
