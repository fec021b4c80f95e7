//! Column output the way kubectl's tab writer lays it out: every column padded to its
//! widest cell plus three spaces, the last one unpadded.

/// Column widths that grow as rows arrive, so a watch keeps its columns aligned.
#[derive(Default)]
pub struct Widths(Vec<usize>);

impl Widths {
    /// Widens the columns to fit `row`.
    pub fn fit(&mut self, row: &[String]) {
        if self.0.len() < row.len() {
            self.0.resize(row.len(), 0);
        }
        for (w, cell) in self.0.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }

    /// One row laid out in these widths.
    pub fn line(&self, row: &[String]) -> String {
        let mut out = String::new();
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < row.len() {
                let pad = self.0.get(i).copied().unwrap_or(0).saturating_sub(cell.chars().count()) + 3;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out
    }
}

/// Prints a header and rows aligned.
pub fn print(header: &[String], rows: Vec<Vec<String>>) {
    let mut w = Widths::default();
    w.fit(header);
    rows.iter().for_each(|r| w.fit(r));
    println!("{}", w.line(header));
    for r in &rows {
        println!("{}", w.line(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_like_kubectl() {
        let mut w = Widths::default();
        let header = vec!["NAME".to_string(), "AGE".to_string()];
        let row = vec!["web-123".to_string(), "5s".to_string()];
        w.fit(&header);
        w.fit(&row);
        assert_eq!(w.line(&header), "NAME      AGE");
        assert_eq!(w.line(&row), "web-123   5s");
    }
}
