//! Dataframes (obs, var, obsm dataframes), string arrays and categoricals.

use super::{ArrayData, Element};

/// An n-dimensional array of strings (row-major).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StringArray {
    pub shape: Vec<usize>,
    pub values: Vec<String>,
}

impl StringArray {
    pub fn from_vec(values: Vec<String>) -> Self {
        Self {
            shape: vec![values.len()],
            values,
        }
    }
}

/// A pandas categorical: integer codes into a list of categories, -1 meaning missing.
#[derive(Debug, Clone, PartialEq)]
pub struct Categorical {
    pub codes: Vec<i32>,
    /// Usually `Element::Strings`; may be a numeric `Element::Dense`.
    pub categories: Box<Element>,
    pub ordered: bool,
}

impl Categorical {
    /// Builds a categorical from labels, with categories in order of first appearance...
    /// sorted, as pandas does when it infers categories from strings.
    pub fn from_labels<S: AsRef<str>>(labels: &[Option<S>]) -> Self {
        let mut cats: Vec<String> = labels
            .iter()
            .flatten()
            .map(|s| s.as_ref().to_string())
            .collect();
        cats.sort();
        cats.dedup();
        let codes = labels
            .iter()
            .map(|l| match l {
                Some(s) => cats
                    .binary_search_by(|c| c.as_str().cmp(s.as_ref()))
                    .map(|i| i as i32)
                    .unwrap_or(-1),
                None => -1,
            })
            .collect();
        Self {
            codes,
            categories: Box::new(Element::Strings(StringArray::from_vec(cats))),
            ordered: false,
        }
    }

    pub fn n_categories(&self) -> usize {
        self.categories.len_first_axis().unwrap_or(0)
    }

    /// Category labels as strings (numbers formatted).
    pub fn category_labels(&self) -> Vec<String> {
        match self.categories.as_ref() {
            Element::Strings(s) => s.values.clone(),
            Element::Dense(a) => (0..a.data.len())
                .map(|i| match &a.data {
                    ArrayData::F32(v) => v[i].to_string(),
                    ArrayData::F64(v) => v[i].to_string(),
                    ArrayData::Bool(v) => v[i].to_string(),
                    other => other.get_f64(i).map(|x| x.to_string()).unwrap_or_default(),
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The label of each row (`None` where the code is -1).
    pub fn labels(&self) -> Vec<Option<String>> {
        let cats = self.category_labels();
        self.codes
            .iter()
            .map(|&c| usize::try_from(c).ok().and_then(|c| cats.get(c).cloned()))
            .collect()
    }
}

/// A dataframe: a string index plus ordered, named, equal-length 1-D columns.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DataFrame {
    /// The name of the index column (the `_index` attribute); `"_index"` when unnamed.
    pub index_name: String,
    pub index: Vec<String>,
    pub columns: Vec<(String, Element)>,
}

impl DataFrame {
    pub fn with_index(index: Vec<String>) -> Self {
        Self {
            index_name: "_index".to_string(),
            index,
            columns: Vec::new(),
        }
    }

    pub fn n_rows(&self) -> usize {
        self.index.len()
    }

    pub fn column(&self, name: &str) -> Option<&Element> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, e)| e)
    }

    /// A label column as a categorical: categoricals as they are; strings, nullable strings
    /// and numbers as pandas would infer categories (sorted). The error names the column
    /// and, when it is absent, the columns that exist.
    pub fn categorical(&self, name: &str) -> Result<Categorical, String> {
        let col = self.column(name).ok_or_else(|| {
            let mut names: Vec<&str> = self.columns.iter().map(|(n, _)| n.as_str()).collect();
            names.sort_unstable();
            format!(
                "\"{name}\" is not a column (there are: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )
        })?;
        let labels: Vec<Option<String>> = match col {
            Element::Categorical(c) => return Ok(c.clone()),
            Element::Strings(s) => s.values.iter().cloned().map(Some).collect(),
            Element::Dense(d) => (0..d.data.len())
                .map(|i| {
                    d.data
                        .get_f64(i)
                        .filter(|x| !x.is_nan())
                        .map(|x| x.to_string())
                })
                .collect(),
            Element::NullableString { values, mask, .. } => values
                .iter()
                .zip(mask)
                .map(|(v, &m)| (!m).then(|| v.clone()))
                .collect(),
            other => {
                return Err(format!(
                    "\"{name}\" is a {} column, not labels",
                    other.encoding_type()
                ));
            }
        };
        Ok(Categorical::from_labels(&labels))
    }

    /// Inserts or replaces a column, keeping the position of a replaced one.
    pub fn set_column(&mut self, name: &str, column: Element) {
        match self.columns.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = column,
            None => self.columns.push((name.to_string(), column)),
        }
    }

    /// Names that occur more than once in the index, first occurrence order, at most `limit`.
    pub fn duplicate_index_values(&self, limit: usize) -> Vec<String> {
        let mut seen = std::collections::HashSet::with_capacity(self.index.len());
        let mut reported = std::collections::HashSet::new();
        let mut out = Vec::new();
        for name in &self.index {
            if !seen.insert(name.as_str()) && reported.insert(name.as_str()) {
                out.push(name.clone());
                if out.len() >= limit {
                    break;
                }
            }
        }
        out
    }

    /// A short type description of a column ("categorical (9)", "int32", "string" ...).
    pub fn column_kind(&self, name: &str) -> Option<String> {
        self.column(name).map(|c| match c {
            Element::Categorical(c) => format!("categorical ({} categories)", c.n_categories()),
            Element::Dense(a) => a.data.dtype().to_string(),
            Element::Strings(_) => "string".to_string(),
            Element::NullableInteger { values, .. } => format!("nullable {}", values.dtype()),
            Element::NullableBoolean { .. } => "nullable bool".to_string(),
            Element::NullableString { .. } => "nullable string".to_string(),
            other => other.encoding_type().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categorical_from_labels_sorts_and_marks_missing() {
        let c = Categorical::from_labels(&[Some("T"), None, Some("B"), Some("T")]);
        assert_eq!(c.codes, vec![1, -1, 0, 1]);
        assert_eq!(c.category_labels(), vec!["B", "T"]);
        assert_eq!(
            c.labels(),
            vec![Some("T".into()), None, Some("B".into()), Some("T".into())]
        );
    }

    #[test]
    fn duplicates_are_reported_once() {
        let df = DataFrame::with_index(vec!["a".into(), "b".into(), "a".into(), "a".into()]);
        assert_eq!(df.duplicate_index_values(10), vec!["a".to_string()]);
    }
}
