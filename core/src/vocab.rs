//! scGPT gene vocabularies (`vocab.json`: `{token: id}`) and matching dataset genes to them.

use std::collections::HashMap;
use std::path::Path;

/// Special tokens scGPT appends when a vocabulary lacks them, in this order.
pub const SPECIAL_TOKENS: [&str; 3] = ["<pad>", "<cls>", "<eoc>"];

#[derive(Debug, thiserror::Error)]
pub enum VocabError {
    #[error("cannot read vocabulary {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("vocabulary {path} is not valid JSON: {message}")]
    Json { path: String, message: String },
    #[error("vocabulary {path}: {message}")]
    Invalid { path: String, message: String },
}

/// A bijective token <-> id map whose ids run from 0 without gaps.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneVocab {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    /// Special tokens that were missing from the file and appended (as scGPT does).
    pub appended_specials: Vec<String>,
}

/// How a dataset's genes matched a vocabulary.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct GeneMatch {
    /// Vocabulary id of each dataset gene (`None` when absent).
    pub ids: Vec<Option<u32>>,
    pub n_genes: usize,
    pub n_matched: usize,
    /// Dataset genes not in the vocabulary, in dataset order.
    pub unmatched: Vec<String>,
}

impl GeneMatch {
    pub fn render(&self, vocab_len: usize) -> String {
        let mut s = format!(
            "matched {}/{} genes in a vocabulary of {} tokens",
            crate::fmt::thousands(self.n_matched as u64),
            crate::fmt::thousands(self.n_genes as u64),
            crate::fmt::thousands(vocab_len as u64)
        );
        if !self.unmatched.is_empty() {
            let shown: Vec<&str> = self.unmatched.iter().take(8).map(String::as_str).collect();
            s.push_str(&format!(
                "; not in the vocabulary: {}{}",
                shown.join(", "),
                if self.unmatched.len() > shown.len() {
                    format!(", ... ({} more)", self.unmatched.len() - shown.len())
                } else {
                    String::new()
                }
            ));
        }
        s
    }
}

/// `ENSG00000141510` for `ENSG00000141510.16` (any `ENS*` id with a numeric version).
pub(crate) fn unversioned_ensembl(g: &str) -> Option<&str> {
    let (id, version) = g.rsplit_once('.')?;
    (id.starts_with("ENS") && !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()))
        .then_some(id)
}

impl GeneVocab {
    /// Build from tokens in id order.
    pub fn from_tokens(tokens: Vec<String>) -> Result<Self, String> {
        let mut ids = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            let id =
                u32::try_from(i).map_err(|_| "vocabulary larger than 2^32 tokens".to_string())?;
            if ids.insert(t.clone(), id).is_some() {
                return Err(format!("token \"{t}\" appears twice"));
            }
        }
        Ok(Self {
            tokens,
            ids,
            appended_specials: Vec::new(),
        })
    }

    /// Parse scGPT's `vocab.json` text; appends missing special tokens like scGPT.
    pub fn from_json_str(text: &str, path: &str) -> Result<Self, VocabError> {
        let invalid = |message: String| VocabError::Invalid {
            path: path.to_owned(),
            message,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| VocabError::Json {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        let obj = value
            .as_object()
            .ok_or_else(|| invalid("expected a JSON object {token: id}".into()))?;
        if obj.is_empty() {
            return Err(invalid("the vocabulary is empty".into()));
        }
        let mut slots: Vec<Option<String>> = vec![None; obj.len()];
        for (token, id) in obj {
            let id = id.as_u64().ok_or_else(|| {
                invalid(format!(
                    "id of \"{token}\" is not a non-negative integer: {id}"
                ))
            })?;
            let slot = usize::try_from(id)
                .ok()
                .and_then(|i| slots.get_mut(i))
                .ok_or_else(|| {
                    invalid(format!(
                        "id {id} of \"{token}\" is out of range: {} tokens must use ids 0..{}",
                        obj.len(),
                        obj.len()
                    ))
                })?;
            if let Some(other) = slot {
                return Err(invalid(format!(
                    "id {id} is used by both \"{other}\" and \"{token}\""
                )));
            }
            *slot = Some(token.clone());
        }
        // All slots are filled: n distinct ids in 0..n.
        let tokens: Vec<String> = slots.into_iter().flatten().collect();
        let mut vocab = Self::from_tokens(tokens).map_err(invalid)?;
        for special in SPECIAL_TOKENS {
            if !vocab.ids.contains_key(special) {
                vocab.push(special.to_owned());
                vocab.appended_specials.push(special.to_owned());
            }
        }
        Ok(vocab)
    }

    pub fn from_json_file(path: &Path) -> Result<Self, VocabError> {
        let text = std::fs::read_to_string(path).map_err(|source| VocabError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    fn push(&mut self, token: String) {
        let id = self.tokens.len() as u32;
        self.ids.insert(token.clone(), id);
        self.tokens.push(token);
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
    pub fn id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// Id of a required special token, with an error naming it when absent.
    pub fn special(&self, token: &str) -> Result<u32, String> {
        self.id(token)
            .ok_or_else(|| format!("the vocabulary has no \"{token}\" token"))
    }

    /// Match dataset gene names; special tokens never match a gene.
    pub fn match_genes(&self, genes: &[String]) -> GeneMatch {
        let mut ids = Vec::with_capacity(genes.len());
        let mut unmatched = Vec::new();
        for g in genes {
            let id = if SPECIAL_TOKENS.contains(&g.as_str()) {
                None
            } else {
                // Ensembl ids with a version ("ENSG00000141510.16") match the unversioned id.
                self.id(g)
                    .or_else(|| unversioned_ensembl(g).and_then(|u| self.id(u)))
            };
            if id.is_none() {
                unmatched.push(g.clone());
            }
            ids.push(id);
        }
        GeneMatch {
            n_genes: genes.len(),
            n_matched: genes.len() - unmatched.len(),
            ids,
            unmatched,
        }
    }

    /// `{token: id}` JSON in id order.
    pub fn to_json(&self) -> String {
        let mut map = serde_json::Map::new();
        for (i, t) in self.tokens.iter().enumerate() {
            map.insert(t.clone(), serde_json::Value::from(i));
        }
        serde_json::Value::Object(map).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_missing_specials_and_matches() {
        let v = GeneVocab::from_json_str(r#"{"B": 1, "A": 0, "<pad>": 2}"#, "v").unwrap();
        assert_eq!(v.len(), 5);
        assert_eq!(v.id("<pad>"), Some(2));
        assert_eq!(v.id("<cls>"), Some(3));
        assert_eq!(
            v.appended_specials,
            vec!["<cls>".to_string(), "<eoc>".to_string()]
        );
        let m = v.match_genes(&["A".into(), "Z".into(), "<cls>".into()]);
        assert_eq!(m.ids, vec![Some(0), None, None]);
        assert_eq!(m.n_matched, 1);
        assert_eq!(m.unmatched, vec!["Z".to_string(), "<cls>".to_string()]);
    }

    #[test]
    fn refuses_gaps_duplicates_and_non_objects() {
        let gap = GeneVocab::from_json_str(r#"{"A": 0, "B": 2}"#, "v").unwrap_err();
        assert!(gap.to_string().contains("out of range"), "{gap}");
        let dup = GeneVocab::from_json_str(r#"{"A": 0, "B": 0}"#, "v").unwrap_err();
        assert!(dup.to_string().contains("used by both"), "{dup}");
        let neg = GeneVocab::from_json_str(r#"{"A": -1}"#, "v").unwrap_err();
        assert!(neg.to_string().contains("non-negative"), "{neg}");
        assert!(GeneVocab::from_json_str("[1,2]", "v").is_err());
        assert!(GeneVocab::from_json_str("{}", "v").is_err());
        assert!(GeneVocab::from_json_str("{", "v").is_err());
    }

    #[test]
    fn versioned_ensembl_ids_match_unversioned_tokens() {
        let v = GeneVocab::from_tokens(vec!["ENSG00000141510".into(), "TP53".into()]).unwrap();
        let m = v.match_genes(&[
            "ENSG00000141510.16".into(),
            "TP53".into(),
            "TP53.1".into(),
            "ENSG00000141510.x".into(),
        ]);
        assert_eq!(m.ids, vec![Some(0), Some(1), None, None]);
        assert_eq!(
            m.unmatched,
            vec!["TP53.1".to_string(), "ENSG00000141510.x".to_string()]
        );
    }
}
