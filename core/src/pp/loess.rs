//! placeholder until the LOESS port lands
#[derive(Debug)]
pub struct LoessError;
impl std::fmt::Display for LoessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("loess")
    }
}
pub fn loess_fit(_x: &[f64], _y: &[f64], _span: f64, _degree: usize) -> Result<Vec<f64>, LoessError> {
    Err(LoessError)
}
