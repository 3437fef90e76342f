//! [`SlotTable`]: the `transactions` table whose rows are swapped in before each execution.
//!
//! Queries are planned once against this table; each micro-batch (or each set of open windows)
//! is put in the slot and the saved logical plan is executed again. Scans read whatever the slot
//! holds when the physical plan is built.

use std::sync::{Arc, RwLock};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

/// An in-memory table with replaceable contents.
#[derive(Debug)]
pub struct SlotTable {
    schema: SchemaRef,
    rows: RwLock<Arc<Vec<RecordBatch>>>,
}

impl SlotTable {
    /// An empty table of `schema`.
    pub fn new(schema: SchemaRef) -> Self {
        Self {
            schema,
            rows: RwLock::new(Arc::new(Vec::new())),
        }
    }

    /// Replace the rows the next scan will read.
    pub fn set(&self, batches: Vec<RecordBatch>) {
        let mut guard = self.rows.write().unwrap_or_else(|p| p.into_inner());
        *guard = Arc::new(batches);
    }

    fn current(&self) -> Arc<Vec<RecordBatch>> {
        Arc::clone(&self.rows.read().unwrap_or_else(|p| p.into_inner()))
    }
}

#[async_trait]
impl TableProvider for SlotTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let rows = self.current();
        let partitions = [rows.as_ref().clone()];
        let exec = MemorySourceConfig::try_new_exec(
            &partitions,
            Arc::clone(&self.schema),
            projection.cloned(),
        )?;
        Ok(exec)
    }
}
