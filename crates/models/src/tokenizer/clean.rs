//! Prompt clean-up before BPE: the part of CLIP's `basic_clean` (ftfy, then `html.unescape`) that matters for prompts.

use tokenizers::NormalizedString;

/// The prompt-relevant part of CLIP's `basic_clean` (ftfy's `fix_text`
/// with its default settings, then `html.unescape` twice): step 1 of the
/// [tokenizer](super)'s pipeline.
pub fn clean_text(text: &str) -> String {
    // ftfy unescapes HTML only when the text has no `<` (it could be HTML).
    let mut s = if text.contains('<') {
        text.to_string()
    } else {
        unescape_html(text)
    };
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let cp = c as u32;
        match c {
            // remove_control_chars
            _ if is_control(cp) => {}
            // uncurl_quotes
            '\u{02BC}' | '\u{2018}'..='\u{201B}' => out.push('\''),
            '\u{201C}'..='\u{201F}' => out.push('"'),
            // fix_character_width
            '\u{3000}' => out.push(' '),
            '\u{FF01}'..='\u{FFEF}' => {
                let mut n = NormalizedString::from(c.to_string());
                n.nfkc();
                out.push_str(n.get());
            }
            _ => match ligature(c) {
                Some(l) => out.push_str(l),
                None => out.push(c),
            },
        }
    }
    s = out;
    let once = unescape_html(&s);
    unescape_html(&once)
}

/// The characters ftfy's `remove_control_chars` drops.
fn is_control(cp: u32) -> bool {
    matches!(
        cp,
        0x00..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0x206A..=0x206F | 0xFEFF | 0xFFF9..=0xFFFC
    )
}

/// ftfy's `fix_latin_ligatures` table.
fn ligature(c: char) -> Option<&'static str> {
    Some(match c {
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'ŉ' => "\u{02BC}n",
        'Ǳ' => "DZ",
        'ǲ' => "Dz",
        'ǳ' => "dz",
        'Ǆ' => "DŽ",
        'ǅ' => "Dž",
        'ǆ' => "dž",
        'Ǉ' => "LJ",
        'ǈ' => "Lj",
        'ǉ' => "lj",
        'Ǌ' => "NJ",
        'ǋ' => "Nj",
        'ǌ' => "nj",
        'ﬀ' => "ff",
        'ﬁ' => "fi",
        'ﬂ' => "fl",
        'ﬃ' => "ffi",
        'ﬄ' => "ffl",
        'ﬅ' => "ſt",
        'ﬆ' => "st",
        _ => return None,
    })
}

/// Named entities decoded (with their `;`); `amp`, `lt`, `gt` and `quot`
/// also without it, as Python's `html.unescape` does.
const ENTITIES: &[(&str, &str)] = &[
    ("amp", "&"),
    ("lt", "<"),
    ("gt", ">"),
    ("quot", "\""),
    ("apos", "'"),
    ("nbsp", "\u{A0}"),
    ("copy", "©"),
    ("reg", "®"),
    ("trade", "™"),
    ("deg", "°"),
    ("hellip", "…"),
    ("mdash", "—"),
    ("ndash", "–"),
    ("lsquo", "‘"),
    ("rsquo", "’"),
    ("ldquo", "“"),
    ("rdquo", "”"),
    ("laquo", "«"),
    ("raquo", "»"),
    ("times", "×"),
    ("divide", "÷"),
    ("euro", "€"),
    ("pound", "£"),
    ("yen", "¥"),
    ("cent", "¢"),
    ("sect", "§"),
    ("para", "¶"),
    ("middot", "·"),
    ("bull", "•"),
];

/// Windows-1252 for the C1 references `&#128;`..`&#159;` (HTML5's rule).
const CP1252_C1: [u32; 32] = [
    0x20AC, 0x81, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039,
    0x0152, 0x8D, 0x017D, 0x8F, 0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
    0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D, 0x017E, 0x0178,
];

/// Decode numeric character references and the entities of [`ENTITIES`].
fn unescape_html(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        match decode_reference(tail) {
            Some((text, used)) => {
                out.push_str(&text);
                rest = &tail[used..];
            }
            None => {
                out.push('&');
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The reference at the start of `tail` (the text after `&`): its
/// replacement and how many bytes of `tail` it used.
fn decode_reference(tail: &str) -> Option<(String, usize)> {
    if let Some(num) = tail.strip_prefix('#') {
        let (hex, digits) = match num.strip_prefix(['x', 'X']) {
            Some(h) => (true, h),
            None => (false, num),
        };
        let len = digits
            .find(|c: char| {
                !(if hex {
                    c.is_ascii_hexdigit()
                } else {
                    c.is_ascii_digit()
                })
            })
            .unwrap_or(digits.len());
        if len == 0 {
            return None;
        }
        let value =
            u32::from_str_radix(&digits[..len], if hex { 16 } else { 10 }).unwrap_or(u32::MAX);
        let mut used = 1 + usize::from(hex) + len;
        if digits[len..].starts_with(';') {
            used += 1;
        }
        let text = match value {
            0 => "\u{FFFD}".to_string(),
            0x80..=0x9F => char::from_u32(CP1252_C1[(value - 0x80) as usize])
                .map(String::from)
                .unwrap_or_default(),
            0x01..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0xFDD0..=0xFDEF => String::new(),
            v if v & 0xFFFE == 0xFFFE && v <= 0x10FFFF => String::new(),
            v => char::from_u32(v)
                .map(String::from)
                .unwrap_or_else(|| "\u{FFFD}".to_string()),
        };
        return Some((text, used));
    }
    for (name, text) in ENTITIES {
        if let Some(after) = tail.strip_prefix(name) {
            if after.starts_with(';') {
                return Some((text.to_string(), name.len() + 1));
            }
        }
    }
    for (name, text) in [("amp", "&"), ("lt", "<"), ("gt", ">"), ("quot", "\"")] {
        for n in [name.to_string(), name.to_ascii_uppercase()] {
            if tail.starts_with(n.as_str()) {
                let used = n.len() + usize::from(tail[n.len()..].starts_with(';'));
                return Some((text.to_string(), used));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_follows_ftfy_and_html_unescape() {
        assert_eq!(clean_text("don’t “quote”"), "don't \"quote\"");
        assert_eq!(clean_text("ＦＵＬＬ　ｗｉｄｔｈ！"), "FULL width!");
        assert_eq!(clean_text("ﬁsh ﬂy"), "fish fly");
        assert_eq!(
            clean_text("fish &amp; chips &#39;n&#x27; &lt;3"),
            "fish & chips 'n' <3"
        );
        assert_eq!(clean_text("a&amp;amp;b"), "a&b");
        assert_eq!(clean_text("AT&T &unknown; &#0;"), "AT&T &unknown; \u{FFFD}");
        assert_eq!(clean_text("tab\tand\u{7}bell"), "tab\tandbell");
        // With a `<` ftfy leaves HTML alone, but html.unescape still runs twice.
        assert_eq!(clean_text("<b> &amp;amp;"), "<b> &");
    }
}
