//! CLIP's byte-level BPE tokenizer, as Stable Diffusion's text encoder expects its input.
//!
//! Built with the `tokenizers` crate from the Hugging Face files of an
//! exported pipeline's `tokenizer/` folder: `vocab.json` + `merges.txt`
//! (the layout `optimum-cli export onnx` writes), or `tokenizer.json` when
//! the folder has one. A prompt goes through:
//!
//! 1. **clean-up**, the part of CLIP's `basic_clean` (ftfy + `html.unescape`)
//!    that matters for prompts: HTML character references and the common
//!    named entities are decoded, curly quotes become straight ones, Latin
//!    ligatures (`ﬁ`) and full-width forms (`ＡＢＣ`) are expanded, stray
//!    control characters are dropped. ftfy's mojibake repair is not
//!    reproduced (a prompt is assumed to be decoded correctly).
//! 2. **normalisation**: NFC, every run of white space to one space,
//!    lower-casing (`whitespace_clean(...).lower()`).
//! 3. **pre-tokenisation** with CLIP's pattern [`CLIP_PATTERN`] (the
//!    matches are the words; everything else, i.e. white space, is
//!    dropped), then each word's UTF-8 bytes are mapped to CLIP's printable
//!    byte alphabet.
//! 4. **BPE** with the `</w>` end-of-word suffix.
//! 5. `<|startoftext|>` + at most 75 tokens + `<|endoftext|>`, then padding
//!    to [`CONTEXT_LENGTH`] (77). A longer prompt is cut to its first 75
//!    tokens and still ends with `<|endoftext|>`, as CLIP and the
//!    diffusers pipelines do.
//!
//! ## Padding
//!
//! The pad token is read from `special_tokens_map.json`, else
//! `tokenizer_config.json` (`pad_token`, a string or `{"content": …}`), and
//! looked up in the vocabulary. Stable Diffusion 1.x exports say
//! `<|endoftext|>` (id 49407); 2.x exports (OpenCLIP text encoders, e.g.
//! sd-turbo) say `!` (id 0, what OpenCLIP pads with). With neither file, or
//! no `pad_token` in them, the end token pads (the SD 1.x behaviour).
//!
//! The start/end ids are looked up by name (`<|startoftext|>` 49406 and
//! `<|endoftext|>` 49407 in the real vocabulary), so a small test
//! vocabulary works the same way.

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::{Error, Result};

mod clean;

pub use clean::clean_text;

/// Tokens per prompt, start and end tokens included (CLIP's context length).
pub const CONTEXT_LENGTH: usize = 77;

/// The start-of-text token.
pub const START_TOKEN: &str = "<|startoftext|>";

/// The end-of-text token (also the unknown token, and SD 1.x's pad token).
pub const END_TOKEN: &str = "<|endoftext|>";

/// CLIP's pre-tokenisation pattern (its `SimpleTokenizer.pat`, applied to
/// lower-cased text).
pub const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// Files of a `tokenizer/` folder.
const VOCAB_FILE: &str = "vocab.json";
const MERGES_FILE: &str = "merges.txt";
const TOKENIZER_JSON: &str = "tokenizer.json";
const SPECIAL_TOKENS_MAP: &str = "special_tokens_map.json";
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

/// A loaded CLIP tokenizer.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    dir: PathBuf,
    start_id: i64,
    end_id: i64,
    pad_id: i64,
    pad_token: String,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("dir", &self.dir)
            .field("start_id", &self.start_id)
            .field("end_id", &self.end_id)
            .field("pad_token", &self.pad_token)
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

impl ClipTokenizer {
    /// Load the tokenizer in `dir`: `tokenizer.json` when present, else
    /// `vocab.json` + `merges.txt`; the pad token from
    /// `special_tokens_map.json` / `tokenizer_config.json` (see the module
    /// docs). A missing file is an error that names it.
    pub fn from_dir(dir: &Path) -> Result<ClipTokenizer> {
        if !dir.is_dir() {
            return Err(Error::bundle(
                dir,
                "tokenizer folder is missing (an exported Stable Diffusion pipeline has \
                 `tokenizer/` with vocab.json and merges.txt)",
            ));
        }
        let fail = |what: String| Error::bundle(dir, what);
        let json = dir.join(TOKENIZER_JSON);
        let mut inner = if json.is_file() {
            let mut t = Tokenizer::from_file(&json)
                .map_err(|e| fail(format!("reading `{TOKENIZER_JSON}`: {e}")))?;
            t.with_truncation(None)
                .map_err(|e| fail(format!("`{TOKENIZER_JSON}`: {e}")))?;
            t.with_padding(None);
            t
        } else {
            for f in [VOCAB_FILE, MERGES_FILE] {
                if !dir.join(f).is_file() {
                    return Err(fail(format!(
                        "tokenizer file `{f}` is missing (need `{VOCAB_FILE}` and \
                         `{MERGES_FILE}`, or `{TOKENIZER_JSON}`)"
                    )));
                }
            }
            build_bpe(&dir.join(VOCAB_FILE), &dir.join(MERGES_FILE))
                .map_err(|e| fail(format!("building the BPE tokenizer: {e}")))?
        };
        let id = |tok: &str| -> Result<i64> {
            inner
                .token_to_id(tok)
                .map(i64::from)
                .ok_or_else(|| fail(format!("the vocabulary has no `{tok}` token")))
        };
        let start_id = id(START_TOKEN)?;
        let end_id = id(END_TOKEN)?;
        let pad_token = read_pad_token(dir)?.unwrap_or_else(|| END_TOKEN.to_string());
        let pad_id = id(&pad_token)?;
        // Every byte, inside a word and at its end, has a token, so any text
        // tokenizes and `encode` cannot fail.
        let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
        alphabet.sort_unstable();
        for c in alphabet {
            for tok in [c.to_string(), format!("{c}</w>")] {
                if inner.token_to_id(&tok).is_none() {
                    return Err(fail(format!(
                        "the vocabulary has no `{tok}` token: not a CLIP byte-level BPE \
                         vocabulary"
                    )));
                }
            }
        }
        // The specials are matched in the (lower-cased) text, as CLIP's
        // pattern matches them.
        inner
            .add_special_tokens([
                AddedToken::from(START_TOKEN, true).normalized(true),
                AddedToken::from(END_TOKEN, true).normalized(true),
            ])
            .map_err(|e| fail(format!("adding the special tokens: {e}")))?;
        Ok(ClipTokenizer {
            inner,
            dir: dir.to_path_buf(),
            start_id,
            end_id,
            pad_id,
            pad_token,
        })
    }

    /// The folder it was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Id of `<|startoftext|>`.
    pub fn start_id(&self) -> i64 {
        self.start_id
    }

    /// Id of `<|endoftext|>`.
    pub fn end_id(&self) -> i64 {
        self.end_id
    }

    /// Id the sequences are padded with.
    pub fn pad_id(&self) -> i64 {
        self.pad_id
    }

    /// The pad token's text.
    pub fn pad_token(&self) -> &str {
        &self.pad_token
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The prompt's BPE ids without start/end tokens, untruncated.
    pub fn tokenize(&self, text: &str) -> Vec<i64> {
        self.pieces_checked(text).0
    }

    /// Whether `text` has more tokens than fit (75 between start and end):
    /// such a prompt is truncated by [`encode`](Self::encode).
    pub fn is_truncated(&self, text: &str) -> bool {
        self.tokenize(text).len() > CONTEXT_LENGTH - 2
    }

    /// The 77 ids the text encoder takes: start, the first 75 BPE tokens,
    /// end, then the pad id.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let (ids, _) = self.pieces_checked(text);
        let mut out = Vec::with_capacity(CONTEXT_LENGTH);
        out.push(self.start_id);
        out.extend(ids.into_iter().take(CONTEXT_LENGTH - 2));
        out.push(self.end_id);
        out.resize(CONTEXT_LENGTH, self.pad_id);
        out
    }

    /// Positions in [`encode`](Self::encode)`(prompt)` (0 is the start
    /// token) of the tokens that spell `word` wherever it occurs in
    /// `prompt` as whole words: `word` is tokenized on its own and its
    /// tokens are looked for in the prompt's, starting and ending on word
    /// boundaries, so "cat" is found in "a photo of a cat" but not in
    /// "a photo of a cats" or "concatenate". A multi-word `word` ("potted
    /// plant") works the same way. Every occurrence counts; tokens cut off
    /// by truncation are left out. Empty when `word` is not in `prompt`.
    pub fn class_token_positions(&self, prompt: &str, word: &str) -> Vec<usize> {
        let (ids, words) = self.pieces_checked(prompt);
        let (needle, _) = self.pieces_checked(word);
        let n = needle.len();
        if n == 0 || n > ids.len() {
            return Vec::new();
        }
        let starts_word = |i: usize| i == 0 || words[i].is_none() || words[i] != words[i - 1];
        let mut out = Vec::new();
        for i in 0..=ids.len() - n {
            let end = i + n;
            if ids[i..end] == needle[..] && starts_word(i) && (end == ids.len() || starts_word(end))
            {
                out.extend((i..end).map(|p| p + 1).filter(|&p| p <= CONTEXT_LENGTH - 2));
            }
        }
        out
    }

    /// Ids and word indices of the cleaned text; `from_dir` checked that
    /// every byte has a token, so this cannot fail.
    fn pieces_checked(&self, text: &str) -> (Vec<i64>, Vec<Option<u32>>) {
        self.pieces(text)
            .expect("invariant: from_dir checked that every byte has a token")
    }

    fn pieces(&self, text: &str) -> tokenizers::Result<(Vec<i64>, Vec<Option<u32>>)> {
        let enc = self.inner.encode(clean_text(text), false)?;
        Ok((
            enc.get_ids().iter().map(|&i| i64::from(i)).collect(),
            enc.get_word_ids().to_vec(),
        ))
    }
}

/// The Hugging Face CLIP pipeline (what `CLIPTokenizerFast` writes to
/// `tokenizer.json`) from `vocab.json` + `merges.txt`.
fn build_bpe(vocab: &Path, merges: &Path) -> tokenizers::Result<Tokenizer> {
    let (v, m) = BPE::read_file(&vocab.to_string_lossy(), &merges.to_string_lossy())?;
    let bpe = BPE::builder()
        .vocab_and_merges(v, m)
        .unk_token(END_TOKEN.to_string())
        .end_of_word_suffix("</w>".to_string())
        .continuing_subword_prefix(String::new())
        .fuse_unk(false)
        .build()?;
    let mut t = Tokenizer::new(bpe);
    t.with_normalizer(Some(NormSequence::new(vec![
        NFC.into(),
        Replace::new(
            tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
            " ",
        )?
        .into(),
        Lowercase.into(),
    ])))?;
    t.with_pre_tokenizer(Some(PreSequence::new(vec![
        Split::new(
            SplitPattern::Regex(CLIP_PATTERN.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )?
        .into(),
        ByteLevel::new(false, false, false).into(),
    ])));
    Ok(t)
}

/// `pad_token` from `special_tokens_map.json`, else `tokenizer_config.json`.
fn read_pad_token(dir: &Path) -> Result<Option<String>> {
    for file in [SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG] {
        let path = dir.join(file);
        if !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io("reading", &path, e))?;
        let json: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::bundle(dir, format!("`{file}` is not valid JSON: {e}")))?;
        let pad = match json.get("pad_token") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Object(o)) => o
                .get("content")
                .and_then(|c| c.as_str())
                .map(str::to_string),
            _ => None,
        };
        if pad.is_some() {
            return Ok(pad);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_dir() -> PathBuf {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .join("tests/fixtures/sd-tiny/tokenizer")
    }

    /// `<home>/models/clip-vocab` (written by `scripts/setup`), or `None`
    /// with a message; under CI=true a missing vocabulary fails the test.
    fn real_vocab() -> Option<ClipTokenizer> {
        let dir = ovdiff_core::Home::from_env()
            .models_dir()
            .join("clip-vocab");
        if !dir.join(VOCAB_FILE).is_file() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but the CLIP vocabulary is missing from {}; run scripts/setup",
                dir.display()
            );
            eprintln!(
                "skipping: no CLIP vocabulary in {} (run scripts/setup)",
                dir.display()
            );
            return None;
        }
        Some(ClipTokenizer::from_dir(&dir).expect("the installed CLIP vocabulary loads"))
    }

    /// Reference ids from a Python reimplementation of OpenAI CLIP's
    /// `SimpleTokenizer` (ftfy 6.3.1, `regex`), over the real BPE file:
    /// start, BPE tokens, end (before padding).
    const REFERENCE: &[(&str, &[i64])] = &[
        (
            "a photo of a cat",
            &[49406, 320, 1125, 539, 320, 2368, 49407],
        ),
        (
            "A good picture of a giraffe",
            &[49406, 320, 886, 1674, 539, 320, 22826, 49407],
        ),
        (
            "Hello, world!!! How's it going?",
            &[49406, 3306, 267, 1002, 995, 829, 568, 585, 1245, 286, 49407],
        ),
        (
            "I'll be there; you're late & they've gone.",
            &[
                49406, 328, 1342, 655, 997, 282, 592, 982, 2325, 261, 889, 1200, 3601, 269, 49407,
            ],
        ),
        (
            "multiple    spaces\tand\nnew  lines",
            &[49406, 6470, 9006, 537, 686, 3418, 49407],
        ),
        (
            "  leading and trailing  ",
            &[49406, 3833, 537, 37427, 49407],
        ),
        (
            "café naïve résumé",
            &[49406, 15304, 1097, 35689, 563, 29106, 7054, 4166, 49407],
        ),
        (
            "東京タワー と 富士山",
            &[
                49406, 48338, 21078, 105, 34941, 2429, 107, 30391, 4813, 357, 161, 107, 234, 161,
                96, 104, 46096, 365, 49407,
            ],
        ),
        (
            "emoji 🐱🐶 party 🎉",
            &[49406, 16327, 35710, 10631, 1580, 3986, 49407],
        ),
        (
            "123 apples cost $4.56 in 2024",
            &[
                49406, 272, 273, 274, 14032, 4713, 259, 275, 269, 276, 277, 530, 273, 271, 273,
                275, 49407,
            ],
        ),
        (
            "x² + ½ = Ⅻ",
            &[49406, 343, 41175, 266, 33613, 284, 158, 227, 375, 49407],
        ),
        (
            "don’t stop “believing”",
            &[49406, 847, 713, 1691, 257, 19551, 257, 49407],
        ),
        (
            "ＦＵＬＬＷＩＤＴＨ text",
            &[49406, 9407, 23571, 4160, 49407],
        ),
        ("ﬁsh ﬂy", &[49406, 2759, 3228, 49407]),
        ("fish &amp; chips", &[49406, 2759, 261, 8855, 49407]),
        ("UPPER Case MiXeD", &[49406, 7067, 2068, 6780, 49407]),
        ("rock'n'roll", &[49406, 2172, 262, 333, 262, 3341, 49407]),
        (
            "a photo of an axolotl",
            &[49406, 320, 1125, 539, 550, 3165, 78, 5132, 331, 49407],
        ),
        (
            "e-mail: someone@example.org #tag",
            &[
                49406, 324, 268, 2614, 281, 2100, 287, 6228, 269, 5593, 258, 3640, 49407,
            ],
        ),
        ("", &[49406, 49407]),
        (
            "a photo of a <|endoftext|> token",
            &[49406, 320, 1125, 539, 320, 49407, 17134, 49407],
        ),
    ];

    fn padded(ids: &[i64], pad: i64) -> Vec<i64> {
        let mut v = ids.to_vec();
        v.resize(CONTEXT_LENGTH, pad);
        v
    }

    #[test]
    fn real_vocabulary_matches_clip_simple_tokenizer() {
        let Some(tok) = real_vocab() else { return };
        assert_eq!(
            (tok.start_id(), tok.end_id(), tok.pad_id()),
            (49406, 49407, 49407)
        );
        assert_eq!(tok.vocab_size(), 49408);
        for (text, want) in REFERENCE {
            let got = tok.encode(text);
            assert_eq!(got.len(), CONTEXT_LENGTH, "{text:?}");
            assert_eq!(got, padded(want, 49407), "{text:?}");
        }
    }

    #[test]
    fn real_vocabulary_truncates_to_77_keeping_the_end_token() {
        let Some(tok) = real_vocab() else { return };
        let text = "a photo of a cat ".repeat(20);
        assert_eq!(tok.tokenize(&text).len(), 100);
        assert!(tok.is_truncated(&text));
        let mut want = vec![49406];
        for _ in 0..15 {
            want.extend([320, 1125, 539, 320, 2368]);
        }
        want.push(49407);
        assert_eq!(tok.encode(&text), want);
        assert!(!tok.is_truncated("a photo of a cat"));
    }

    #[test]
    fn sd2_style_export_pads_with_exclamation_mark() {
        let Some(real) = real_vocab() else { return };
        let dir = tempfile::tempdir().unwrap();
        for f in [VOCAB_FILE, MERGES_FILE] {
            std::fs::copy(real.dir().join(f), dir.path().join(f)).unwrap();
        }
        std::fs::write(
            dir.path().join(SPECIAL_TOKENS_MAP),
            r#"{"bos_token": {"content": "<|startoftext|>"}, "pad_token": "!"}"#,
        )
        .unwrap();
        let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
        assert_eq!((tok.pad_token(), tok.pad_id()), ("!", 0));
        for (text, want) in REFERENCE {
            assert_eq!(tok.encode(text), padded(want, 0), "{text:?}");
        }
        // The object form of pad_token, in tokenizer_config.json.
        std::fs::remove_file(dir.path().join(SPECIAL_TOKENS_MAP)).unwrap();
        std::fs::write(
            dir.path().join(TOKENIZER_CONFIG),
            r#"{"model_max_length": 77, "pad_token": {"content": "!", "normalized": true}}"#,
        )
        .unwrap();
        assert_eq!(ClipTokenizer::from_dir(dir.path()).unwrap().pad_id(), 0);
    }

    #[test]
    fn fixture_vocabulary_agrees_with_the_real_one() {
        let Some(real) = real_vocab() else { return };
        let tiny = ClipTokenizer::from_dir(&fixture_dir()).unwrap();
        let real_vocab = real.inner.get_vocab(true);
        let tiny_vocab = tiny.inner.get_vocab(true);
        let name = |v: &std::collections::HashMap<String, u32>, id: i64| {
            v.iter()
                .find(|(_, &i)| i64::from(i) == id)
                .map(|(t, _)| t.clone())
                .unwrap()
        };
        for text in [
            "a good picture of a fixture-class",
            "A photo of an axolotl on the grass",
            "a cat, a dog; a giraffe in the background!",
        ] {
            let a: Vec<String> = real
                .tokenize(text)
                .iter()
                .map(|&i| name(&real_vocab, i))
                .collect();
            let b: Vec<String> = tiny
                .tokenize(text)
                .iter()
                .map(|&i| name(&tiny_vocab, i))
                .collect();
            assert_eq!(a, b, "{text:?}");
        }
    }

    #[test]
    fn fixture_tokenizer_encodes_prompts() {
        let tok = ClipTokenizer::from_dir(&fixture_dir()).unwrap();
        assert_eq!(
            tok.pad_id(),
            tok.end_id(),
            "SD 1.x style: pads with the end token"
        );
        let ids = tok.encode("A good picture of a fixture-class");
        assert_eq!(ids.len(), CONTEXT_LENGTH);
        assert_eq!(ids[0], tok.start_id());
        // a good picture of a fixture - class
        assert_eq!(ids[9], tok.end_id());
        assert!(ids[10..].iter().all(|&i| i == tok.pad_id()));
        assert!(ids[1..9].iter().all(|&i| i < tok.start_id()));
        assert_eq!(ids[1], ids[5], "both `a`s are the same token");
        assert_eq!(
            tok.encode("a  GOOD\tpicture of a fixture-class "),
            ids,
            "white space and case do not matter"
        );
        assert!(tok.vocab_size() < 1000);
    }

    /// tests/fixtures/sd-tiny/make_attention_unet.py builds its UNet from
    /// these two encodings (COND_IDS, UNCOND_IDS): the prompt and the empty
    /// negative prompt of the exact-map integration test.
    #[test]
    fn attention_fixture_prompts_encode_as_its_script_assumes() {
        let tok = ClipTokenizer::from_dir(&fixture_dir()).unwrap();
        let mut cond = vec![592, 320, 559, 568, 526, 320, 588, 268, 570];
        cond.resize(CONTEXT_LENGTH, 593);
        assert_eq!(tok.encode("A good picture of a fixture-class"), cond);
        let mut uncond = vec![592];
        uncond.resize(CONTEXT_LENGTH, 593);
        assert_eq!(tok.encode(""), uncond);
    }

    #[test]
    fn class_token_positions_find_whole_words() {
        let tok = ClipTokenizer::from_dir(&fixture_dir()).unwrap();
        let prompt = "a good picture of a fixture-class";
        assert_eq!(
            tok.class_token_positions(prompt, "fixture-class"),
            vec![6, 7, 8]
        );
        assert_eq!(tok.class_token_positions(prompt, "class"), vec![8]);
        assert_eq!(tok.class_token_positions(prompt, "a"), vec![1, 5]);
        assert_eq!(
            tok.class_token_positions(prompt, "Good Picture"),
            vec![2, 3]
        );
        assert!(tok.class_token_positions(prompt, "cat").is_empty());
        assert!(tok.class_token_positions(prompt, "").is_empty());
        // A multi-token word, and no match inside a longer word.
        let prompt = "a photo of an axolotl";
        let pos = tok.class_token_positions(prompt, "axolotl");
        assert_eq!(pos, vec![5, 6, 7, 8]);
        let ids = tok.encode(prompt);
        assert_eq!(ids[9], tok.end_id());
        assert!(tok
            .class_token_positions("a photo of axolotls", "axolotl")
            .is_empty());
        assert!(tok
            .class_token_positions("a photo of a cats", "cat")
            .is_empty());
        // Positions cut off by truncation are dropped.
        let long = format!("{} cat", "dog ".repeat(80));
        assert!(tok.class_token_positions(&long, "cat").is_empty());
        let long = format!("{} cat", "dog ".repeat(74));
        assert_eq!(tok.class_token_positions(&long, "cat"), vec![75]);
    }

    #[test]
    fn tokenizer_json_is_used_when_present() {
        let tok = ClipTokenizer::from_dir(&fixture_dir()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        tok.inner
            .save(dir.path().join(TOKENIZER_JSON), false)
            .unwrap();
        let from_json = ClipTokenizer::from_dir(dir.path()).unwrap();
        for text in [
            "a good picture of a fixture-class",
            "An AXOLOTL, on grass!",
            "ｆｉｘ",
        ] {
            assert_eq!(from_json.encode(text), tok.encode(text), "{text:?}");
        }
        std::fs::write(dir.path().join(TOKENIZER_JSON), "{").unwrap();
        let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().report();
        assert!(err.contains("tokenizer.json"), "{err}");
    }

    #[test]
    fn missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = ClipTokenizer::from_dir(&dir.path().join("nope"))
            .unwrap_err()
            .report();
        assert!(err.contains("tokenizer folder is missing"), "{err}");
        std::fs::copy(fixture_dir().join(VOCAB_FILE), dir.path().join(VOCAB_FILE)).unwrap();
        let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().report();
        assert!(err.contains("`merges.txt` is missing"), "{err}");
        std::fs::copy(
            fixture_dir().join(MERGES_FILE),
            dir.path().join(MERGES_FILE),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(SPECIAL_TOKENS_MAP),
            r#"{"pad_token": "<pad>"}"#,
        )
        .unwrap();
        let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().report();
        assert!(err.contains("no `<pad>` token"), "{err}");
        let vocab = std::fs::read_to_string(fixture_dir().join(VOCAB_FILE)).unwrap();
        std::fs::write(
            dir.path().join(VOCAB_FILE),
            vocab.replace("\"q</w>\"", "\"q_</w>\""),
        )
        .unwrap();
        std::fs::remove_file(dir.path().join(SPECIAL_TOKENS_MAP)).unwrap();
        let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().report();
        assert!(err.contains("no `q</w>` token"), "{err}");
        std::fs::copy(fixture_dir().join(VOCAB_FILE), dir.path().join(VOCAB_FILE)).unwrap();
        std::fs::write(dir.path().join(SPECIAL_TOKENS_MAP), "{not json").unwrap();
        let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().report();
        assert!(err.contains("special_tokens_map.json"), "{err}");
        std::fs::remove_file(dir.path().join(SPECIAL_TOKENS_MAP)).unwrap();
        assert!(ClipTokenizer::from_dir(dir.path()).is_ok());
    }
}
