//! The XLSX writer of `format = "xlsx"` report types: a workbook of one sheet in
//! rust_xlsxwriter's constant-memory mode, which writes each row to disk as it comes, so
//! a report of a million rows never holds them in memory.

use std::path::Path;

use rust_xlsxwriter::{Workbook, XlsxError};
use tokio::sync::mpsc;

use super::sink::{measure_written, Measurement};
use super::GeneratorError;

/// A batch of rows, each field as PostgreSQL's text (None for NULL).
pub(crate) type Rows = Vec<Vec<Option<String>>>;

/// The sheet's columns: their names (the header row) and which hold numbers.
#[derive(Debug, Clone)]
pub(crate) struct Columns {
    /// The header row.
    pub names: Vec<String>,
    /// Written as numbers (the column's PostgreSQL type is numeric), else as text.
    pub numeric: Vec<bool>,
}

/// XLSX's limits on one sheet: past them Excel cannot open the file.
const MAX_ROWS: u32 = 1_048_576;
const MAX_COLUMNS: u16 = 16_384;

/// Writes the header and every batch received to `temp` in `dir`, then measures the
/// file. A report past XLSX's limits fails for good (it would fail the same way again).
pub(crate) fn write_rows(
    dir: &Path,
    temp: &Path,
    mut batches: mpsc::Receiver<Rows>,
    columns: &Columns,
) -> Result<Measurement, GeneratorError> {
    let mut write = || -> Result<(), XlsxError> {
        std::fs::create_dir_all(dir)?;
        let mut workbook = Workbook::new();
        // Its row files go next to the report's, not to the system's temporary directory.
        workbook.set_tempdir(dir)?;
        let sheet = workbook.add_worksheet_with_constant_memory()?;
        for (column, name) in (0_u16..).zip(&columns.names) {
            sheet.write_string(0, column, name)?;
        }
        let mut row: u32 = 1;
        while let Some(batch) = batches.blocking_recv() {
            for fields in batch {
                write_row(sheet, row, &fields, &columns.numeric)?;
                row += 1;
            }
        }
        workbook.save(temp)
    };
    match write() {
        Ok(()) => measure_written(temp),
        Err(e) => {
            let _ = std::fs::remove_file(temp);
            Err(classify(e))
        }
    }
}

fn write_row(
    sheet: &mut rust_xlsxwriter::Worksheet,
    row: u32,
    fields: &[Option<String>],
    numeric: &[bool],
) -> Result<(), XlsxError> {
    for (column, field) in (0_u16..).zip(fields) {
        let Some(text) = field else { continue };
        let number = numeric
            .get(usize::from(column))
            .copied()
            .unwrap_or(false)
            .then(|| text.parse::<f64>().ok())
            .flatten();
        match number {
            Some(number) => sheet.write_number(row, column, number)?,
            None => sheet.write_string(row, column, text)?,
        };
    }
    Ok(())
}

/// A full sheet or a too-long cell is the report's own problem; an I/O error is the
/// host's or a retryable one, as for any file.
fn classify(error: XlsxError) -> GeneratorError {
    match error {
        XlsxError::IoError(e) => GeneratorError::from_io("cannot write the workbook", &e),
        XlsxError::RowColumnLimitError => GeneratorError::Permanent(format!(
            "the report does not fit one XLSX sheet ({MAX_ROWS} rows, {MAX_COLUMNS} columns at most)"
        )),
        other => GeneratorError::Permanent(format!("cannot write the workbook: {other}")),
    }
}
