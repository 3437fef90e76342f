//! A windowed query as DataFusion's two-phase aggregation: partial states per batch, merged with
//! `PartialReduce`, finalized with `Final`, then the query's own projection on top.
//!
//! [`WindowQuery::new`] plans the query once against the (empty) `transactions` slot and keeps
//! the pieces of its aggregate: the grouping, the aggregate functions and the input schema. The
//! GROUP BY is extended with `_partition` (unless the query groups by it already), so one partial
//! aggregation over a whole micro-batch yields states that can be split per Kafka partition:
//! the state of each partition is committed with that partition's ledger entry.
//!
//! Three operations, all run by DataFusion's own `AggregateExec` and accumulators (percentiles of
//! one value share one of `approx_percentile_cont`'s digests: [`super::digests`]):
//! - [`WindowQuery::partial`]: rows of a batch → partial state rows `[group…, _partition, state…]`;
//! - [`WindowQuery::reduce`]: several state rows of the same group → one (merged);
//! - [`WindowQuery::finish`]: the state rows of some windows, from every partition → the query's
//!   output rows (the `Final` aggregate, then whatever the query does above its aggregate:
//!   aliases, casts, HAVING, ORDER BY).
//!
//! Every aggregate function DataFusion offers has mergeable state (`count`, `sum`, `avg`, `min`,
//! `max`, `count(DISTINCT …)`, `approx_percentile_cont` with its t-digest …), so every point is the
//! aggregate over all rows of its window, as DataFusion computes it over the lake.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int32Array, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{
    DataType, Int32Type, Schema, SchemaRef, TimeUnit, TimestampMillisecondType,
};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, col};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};
use datafusion::prelude::SessionContext;

use super::WindowSpec;
use crate::schema::COL_PARTITION;

/// The pieces of one planned aggregate.
#[derive(Debug, Clone)]
struct Pieces {
    group_by: PhysicalGroupBy,
    aggr: Vec<Arc<AggregateFunctionExpr>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    input_schema: SchemaRef,
    /// Output of the partial phase: group columns, then state columns.
    state_schema: SchemaRef,
}

impl Pieces {
    /// The aggregate over `input` in `mode`, from these pieces.
    fn exec(&self, mode: AggregateMode, input: Arc<dyn ExecutionPlan>) -> Result<AggregateExec> {
        let (group_by, filters) = match mode {
            AggregateMode::Partial | AggregateMode::Single => {
                (self.group_by.clone(), self.filters.clone())
            }
            _ => (self.group_by.as_final(), vec![None; self.aggr.len()]),
        };
        AggregateExec::try_new(
            mode,
            group_by,
            self.aggr.clone(),
            filters,
            input,
            Arc::clone(&self.input_schema),
        )
    }
}

/// The top aggregate of a physical plan and the node whose input is the raw rows (the same node
/// for a one-phase aggregate).
fn find_aggregate(plan: &Arc<dyn ExecutionPlan>) -> Option<(&AggregateExec, &AggregateExec)> {
    if let Some(top) = plan.downcast_ref::<AggregateExec>() {
        let mut raw = top;
        while matches!(
            raw.mode(),
            AggregateMode::Final | AggregateMode::FinalPartitioned | AggregateMode::PartialReduce
        ) {
            let mut at = raw.input();
            loop {
                if let Some(a) = at.downcast_ref::<AggregateExec>() {
                    raw = a;
                    break;
                }
                match at.children().as_slice() {
                    [only] => at = only,
                    _ => return None,
                }
            }
        }
        return Some((top, raw));
    }
    plan.children().into_iter().find_map(find_aggregate)
}

fn pieces_of(raw: &AggregateExec) -> Result<Pieces> {
    let partial = if *raw.mode() == AggregateMode::Partial {
        raw.clone()
    } else {
        AggregateExec::try_new(
            AggregateMode::Partial,
            raw.group_expr().clone(),
            raw.aggr_expr().to_vec(),
            raw.filter_expr().to_vec(),
            Arc::clone(raw.input()),
            raw.input_schema(),
        )?
    };
    Ok(Pieces {
        group_by: raw.group_expr().clone(),
        aggr: raw.aggr_expr().to_vec(),
        filters: raw.filter_expr().to_vec(),
        input_schema: raw.input_schema(),
        state_schema: partial.schema(),
    })
}

fn internal(msg: impl Into<String>) -> DataFusionError {
    DataFusionError::Internal(msg.into())
}

async fn run(plan: Arc<dyn ExecutionPlan>, ctx: &SessionContext) -> Result<Vec<RecordBatch>> {
    datafusion::physical_plan::collect(plan, ctx.task_ctx()).await
}

fn memory(batches: Vec<RecordBatch>, schema: SchemaRef) -> Result<Arc<dyn ExecutionPlan>> {
    Ok(MemorySourceConfig::try_new_exec(&[batches], schema, None)?)
}

/// The non-empty rows of `batches` as one batch (`None`: no rows). A merge takes one slice per
/// window and partition; an aggregate pays a fixed cost per input batch (group hashing, every
/// accumulator's merge, the stream's bookkeeping) that for batches of a few rows outweighs the
/// rows' own work.
fn one_batch(batches: &[RecordBatch]) -> Result<Option<RecordBatch>> {
    let rows: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
    Ok(match rows.as_slice() {
        [] => None,
        [only] => Some((*only).clone()),
        [first, ..] => Some(concat_batches(&first.schema(), rows.iter().copied())?),
    })
}

/// A windowed Influx query, ready for partial, reduce and final phases.
#[derive(Debug, Clone)]
pub struct WindowQuery {
    /// The window.
    pub spec: WindowSpec,
    /// The query's plan over `transactions`.
    plan: LogicalPlan,
    /// Only the aggregate, its GROUP BY extended with `_partition`.
    extended: LogicalPlan,
    /// Pieces of the extended aggregate (partial and reduce phases).
    ext: Pieces,
    /// Pieces of the query's own aggregate (final phase).
    own: Pieces,
    /// Index of the window column in the extended state rows.
    time_col: usize,
    /// Index of `_partition` in the extended state rows.
    partition_col: usize,
    /// `_partition` was added to the GROUP BY (and is dropped before the final phase).
    added_partition: bool,
    /// The whole query planned once; its top aggregate is replaced by the final rows.
    post: Arc<dyn ExecutionPlan>,
}

fn find_logical_aggregate(plan: &LogicalPlan) -> Option<&Aggregate> {
    match plan {
        LogicalPlan::Aggregate(a) => Some(a),
        other => match other.inputs().as_slice() {
            [only] => find_logical_aggregate(only),
            _ => None,
        },
    }
}

fn is_partition_column(e: &Expr) -> bool {
    match e {
        Expr::Column(c) => c.name == COL_PARTITION,
        Expr::Alias(a) => is_partition_column(&a.expr),
        _ => false,
    }
}

impl WindowQuery {
    /// Prepare `plan` (a windowed query planned against `ctx`'s `transactions`, which should be
    /// empty now) whose window is `spec`.
    pub async fn new(plan: &LogicalPlan, spec: WindowSpec, ctx: &SessionContext) -> Result<Self> {
        // Percentiles of one value share one digest (the state layout
        // `super::digests::fingerprint` names).
        let shared = super::digests::share(plan)?;
        let plan = shared.as_ref().unwrap_or(plan);
        let aggregate = find_logical_aggregate(plan)
            .ok_or_else(|| internal("a windowed query without an aggregate"))?;
        let window_name = aggregate
            .schema
            .field(
                aggregate
                    .group_expr
                    .iter()
                    .position(|e| {
                        matches!(super::unalias(e), Expr::ScalarFunction(f)
                            if matches!(f.func.name(), "date_bin" | "date_trunc"))
                    })
                    .ok_or_else(|| internal("no window among the GROUP BY expressions"))?,
            )
            .name()
            .clone();
        let mut group = aggregate.group_expr.clone();
        let added_partition = !group.iter().any(is_partition_column);
        if added_partition {
            group.push(col(COL_PARTITION));
        }
        let extended = LogicalPlan::Aggregate(Aggregate::try_new(
            Arc::clone(&aggregate.input),
            group,
            aggregate.aggr_expr.clone(),
        )?);
        let state = ctx.state();
        let ext_plan = state.create_physical_plan(&extended).await?;
        let (_, raw) = find_aggregate(&ext_plan)
            .ok_or_else(|| internal("the extended aggregate was not planned as an aggregate"))?;
        let ext = pieces_of(raw)?;
        let post = state.create_physical_plan(plan).await?;
        let (_, own_raw) = find_aggregate(&post)
            .ok_or_else(|| internal("the query was not planned with an aggregate"))?;
        let own = pieces_of(own_raw)?;
        let time_col = ext
            .state_schema
            .index_of(&window_name)
            .map_err(|_| internal(format!("window column {window_name} not in the state")))?;
        let partition_col = ext
            .state_schema
            .fields()
            .iter()
            .take(ext.group_by.expr().len())
            .position(|f| f.name() == COL_PARTITION)
            .ok_or_else(|| internal("_partition not in the extended state"))?;
        let q = Self {
            spec,
            plan: plan.clone(),
            extended,
            ext,
            own,
            time_col,
            partition_col,
            added_partition,
            post,
        };
        // The extended state without `_partition` must be exactly the query's own state.
        let own_fields: Vec<_> = q
            .own
            .state_schema
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        let reduced: Vec<_> = q
            .to_own_state(&RecordBatch::new_empty(Arc::clone(&q.ext.state_schema)))?
            .schema()
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        if own_fields != reduced {
            return Err(internal(format!(
                "partial state layouts differ: {own_fields:?} vs {reduced:?}"
            )));
        }
        Ok(q)
    }

    /// The schema of committed state rows (group columns with `_partition`, then states).
    pub fn state_schema(&self) -> SchemaRef {
        Arc::clone(&self.ext.state_schema)
    }

    /// Index of the window column in state rows.
    pub fn time_index(&self) -> usize {
        self.time_col
    }

    /// The query's logical plan.
    pub fn plan(&self) -> &LogicalPlan {
        &self.plan
    }

    /// Partial states of the rows now in `ctx`'s `transactions` table (one row per window, group
    /// and partition).
    pub async fn partial(&self, ctx: &SessionContext) -> Result<Vec<RecordBatch>> {
        run(self.plan_partial(ctx).await?, ctx).await
    }

    /// The plan of [`WindowQuery::partial`]: it holds the rows that were in `ctx`'s
    /// `transactions` table when it was made, so it can run while the table takes other rows.
    pub async fn plan_partial(&self, ctx: &SessionContext) -> Result<Arc<dyn ExecutionPlan>> {
        let planned = ctx.state().create_physical_plan(&self.extended).await?;
        let (_, raw) = find_aggregate(&planned)
            .ok_or_else(|| internal("the extended aggregate was not planned as an aggregate"))?;
        let input = Arc::clone(raw.input());
        Ok(Arc::new(self.ext.exec(AggregateMode::Partial, input)?))
    }

    /// Merge state rows: one row per (window, group, partition).
    pub async fn reduce(
        &self,
        states: Vec<RecordBatch>,
        ctx: &SessionContext,
    ) -> Result<Vec<RecordBatch>> {
        let Some(states) = one_batch(&states)? else {
            return Ok(Vec::new());
        };
        let input = memory(vec![states], self.state_schema())?;
        let reduce = self.ext.exec(AggregateMode::PartialReduce, input)?;
        run(Arc::new(reduce), ctx).await
    }

    /// The query's output rows for the windows whose state rows (from every partition) are
    /// given: the final aggregate, then the query's own projection, filter and order on top.
    pub async fn finish(
        &self,
        states: Vec<RecordBatch>,
        ctx: &SessionContext,
    ) -> Result<Vec<RecordBatch>> {
        let Some(states) = one_batch(&states)? else {
            return Ok(Vec::new());
        };
        let own = self.to_own_state(&states)?;
        let input = memory(vec![own], Arc::clone(&self.own.state_schema))?;
        let finals = run(Arc::new(self.own.exec(AggregateMode::Final, input)?), ctx).await?;
        let (top, _) =
            find_aggregate(&self.post).ok_or_else(|| internal("the query lost its aggregate"))?;
        let out_schema = top.schema();
        let finals = finals
            .into_iter()
            .map(|b| {
                RecordBatch::try_new(Arc::clone(&out_schema), b.columns().to_vec())
                    .map_err(DataFusionError::from)
            })
            .collect::<Result<Vec<_>>>()?;
        let rows = memory(finals, Arc::clone(&out_schema))?;
        let mut replaced = false;
        let plan = Arc::clone(&self.post)
            .transform_down(|node| {
                if !replaced && node.is::<AggregateExec>() {
                    replaced = true;
                    return Ok(Transformed::yes(Arc::clone(&rows)));
                }
                Ok(Transformed::no(node))
            })?
            .data;
        run(plan, ctx).await
    }

    /// State rows without the added `_partition` column (the query's own state layout).
    fn to_own_state(&self, b: &RecordBatch) -> Result<RecordBatch> {
        if !self.added_partition {
            return Ok(b.clone());
        }
        let keep: Vec<usize> = (0..b.num_columns())
            .filter(|&i| i != self.partition_col)
            .collect();
        Ok(b.project(&keep)?)
    }

    /// The window start (ms) of every state row.
    pub fn window_starts(&self, b: &RecordBatch) -> Result<Vec<Option<i64>>> {
        let c = arrow::compute::cast(
            b.column(self.time_col),
            &DataType::Timestamp(TimeUnit::Millisecond, None),
        )?;
        let c = c.as_primitive::<TimestampMillisecondType>();
        Ok((0..c.len())
            .map(|i| (!c.is_null(i)).then(|| c.value(i)))
            .collect())
    }

    /// The Kafka partition of every state row.
    pub fn partitions_of(&self, b: &RecordBatch) -> Result<Int32Array> {
        let c: &ArrayRef = b.column(self.partition_col);
        Ok(c.as_primitive::<Int32Type>().clone())
    }

    /// Concatenate state rows (all with the state schema).
    pub fn concat(&self, batches: &[RecordBatch]) -> Result<RecordBatch> {
        Ok(concat_batches(&self.state_schema(), batches)?)
    }
}

/// `schema` with every field nullable (for comparisons that ignore nullability).
pub fn loosen(schema: &Schema) -> Schema {
    Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    )
}
