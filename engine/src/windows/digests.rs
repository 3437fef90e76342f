//! One t-digest for every `approx_percentile_cont` of the same value in an aggregate.
//!
//! `approx_percentile_cont(0.25) WITHIN GROUP (ORDER BY x)`, `(0.5)`, `(0.75)`, `(0.9)` — the
//! shipped `price_percentiles` query — are four aggregate functions to DataFusion, each keeping
//! its own t-digest of the same values: four times the sorting and merging of the same numbers,
//! and four digests per window, group and partition in the window state the ledger commits. (The
//! bench profile of 2026-12-01 put the digests' merges and state conversions at about 12% of the
//! engine's CPU.)
//!
//! [`share`] rewrites such an aggregate before it is planned: the calls of one value (and one
//! digest size) become one [`carflow_tdigest`](DigestUdaf) aggregate — the same accumulator as
//! `approx_percentile_cont`, which keeps the digest and returns it whole — and a projection above
//! the aggregate reads each percentile from it ([`carflow_tdigest_quantile`](QuantileUdf)), so
//! the plan's output is unchanged. The digest is built by the same code from the same values in
//! the same order as each of the four was, and the quantile is estimated the same way, so every
//! value is the one `approx_percentile_cont` gives.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Float64Builder, RecordBatch};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Schema};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, Result, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::functions_aggregate::approx_percentile_cont::ApproxPercentileAccumulator;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, Aggregate, AggregateUDF, AggregateUDFImpl, ColumnarValue, Expr, ExprSchemable,
    LogicalPlan, Projection, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    TypeSignature, Volatility, lit,
};
use datafusion_functions_aggregate_common::tdigest::{Centroid, DEFAULT_MAX_SIZE, TDigest};

/// What the state layout of a query [`share`] rewrote is called in its fingerprint: window state
/// committed by a carflow that kept four digests is not read as one.
const LAYOUT: &str = "shared-tdigest-1";

/// `plan` with the percentiles of each aggregate sharing their digests, or `None` when no
/// aggregate has two `approx_percentile_cont` calls of the same value (the plan is used as is).
pub fn share(plan: &LogicalPlan) -> Result<Option<LogicalPlan>> {
    let out = plan.clone().transform_up(|node| {
        let LogicalPlan::Aggregate(agg) = &node else {
            return Ok(Transformed::no(node));
        };
        Ok(match rewrite(agg)? {
            Some(p) => Transformed::yes(p),
            None => Transformed::no(node),
        })
    })?;
    Ok(out.transformed.then_some(out.data))
}

/// The fingerprint of window state of `plan`: `base`, marked when [`share`] rewrites the plan (its
/// state holds one digest where the plan as written has several).
pub fn fingerprint(plan: &LogicalPlan, base: String) -> String {
    match share(plan) {
        Ok(Some(_)) => format!("{base}-{LAYOUT}"),
        _ => base,
    }
}

/// A percentile call that can share its digest: (value, digest size, the percentile it reads).
fn percentile_call(e: &Expr, input: &DFSchema) -> Option<(Expr, Option<Expr>, f64)> {
    let Expr::AggregateFunction(f) = e else {
        return None;
    };
    let p = &f.params;
    if f.func.name() != "approx_percentile_cont"
        || p.distinct
        || p.filter.is_some()
        || p.null_treatment.is_some()
        || !(2..=3).contains(&p.args.len())
    {
        return None;
    }
    let Expr::Literal(ScalarValue::Float64(Some(q)), _) = &p.args[1] else {
        return None;
    };
    let value = p.args[0].clone();
    // Other float types return their own type; only Float64 is read back as is.
    if value.get_type(input).ok()? != DataType::Float64 {
        return None;
    }
    let size = p.args.get(2).cloned();
    if size
        .as_ref()
        .is_some_and(|s| !matches!(s, Expr::Literal(..)))
    {
        return None;
    }
    // approx_percentile_cont reads 1 - q of a digest ordered descending.
    let descending = p.order_by.first().is_some_and(|s| !s.asc);
    Some((value, size, if descending { 1.0 - q } else { *q }))
}

/// Calls of one value and digest size, by their index among the aggregate's expressions.
struct Shared {
    value: Expr,
    size: Option<Expr>,
    reads: Vec<(usize, f64)>,
}

fn rewrite(agg: &Aggregate) -> Result<Option<LogicalPlan>> {
    if agg
        .group_expr
        .iter()
        .any(|e| matches!(e, Expr::GroupingSet(_)))
        || agg.schema.fields().len() != agg.group_expr.len() + agg.aggr_expr.len()
    {
        return Ok(None);
    }
    let mut shared: Vec<Shared> = Vec::new();
    for (i, e) in agg.aggr_expr.iter().enumerate() {
        let Some((value, size, q)) = percentile_call(e, agg.input.schema()) else {
            continue;
        };
        match shared
            .iter_mut()
            .find(|s| s.value == value && s.size == size)
        {
            Some(s) => s.reads.push((i, q)),
            None => shared.push(Shared {
                value,
                size,
                reads: vec![(i, q)],
            }),
        }
    }
    shared.retain(|s| s.reads.len() >= 2);
    if shared.is_empty() {
        return Ok(None);
    }
    let mut read_from: HashMap<usize, (String, f64)> = HashMap::new();
    let mut aggr: Vec<Expr> = Vec::new();
    let mut digests = Vec::new();
    for (n, s) in shared.iter().enumerate() {
        let name = format!("__carflow_digest_{n}");
        for (i, q) in &s.reads {
            read_from.insert(*i, (name.clone(), *q));
        }
        let mut args = vec![s.value.clone()];
        args.extend(s.size.clone());
        digests.push(
            Expr::AggregateFunction(AggregateFunction::new_udf(
                Arc::clone(&DIGEST),
                args,
                false,
                None,
                vec![],
                None,
            ))
            .alias(name),
        );
    }
    for (i, e) in agg.aggr_expr.iter().enumerate() {
        if !read_from.contains_key(&i) {
            aggr.push(e.clone());
        }
    }
    aggr.extend(digests);
    let inner = Aggregate::try_new(Arc::clone(&agg.input), agg.group_expr.clone(), aggr)?;
    let groups = agg.group_expr.len();
    let exprs = agg
        .schema
        .iter()
        .enumerate()
        .map(|(j, (qualifier, field))| {
            match j.checked_sub(groups).and_then(|i| read_from.get(&i)) {
                Some((digest, q)) => QUANTILE
                    .call(vec![Expr::Column(Column::new_unqualified(digest)), lit(*q)])
                    .alias_qualified(qualifier.cloned(), field.name()),
                None => Expr::Column(Column::from((qualifier, field))),
            }
        })
        .collect();
    let projection = Projection::try_new(exprs, Arc::new(LogicalPlan::Aggregate(inner)))?;
    Ok(Some(LogicalPlan::Projection(projection)))
}

static DIGEST: LazyLock<Arc<AggregateUDF>> =
    LazyLock::new(|| Arc::new(AggregateUDF::new_from_impl(DigestUdaf::new())));

static QUANTILE: LazyLock<Arc<ScalarUDF>> =
    LazyLock::new(|| Arc::new(ScalarUDF::new_from_impl(QuantileUdf::new())));

/// `carflow_tdigest(value [, size])`: the t-digest of the values, as `approx_percentile_cont`
/// keeps it, returned whole: `[size, sum, count, max, min, mean₁, weight₁, …]`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct DigestUdaf {
    signature: Signature,
}

impl DigestUdaf {
    fn new() -> Self {
        Self {
            signature: Signature::one_of(
                vec![
                    TypeSignature::Exact(vec![DataType::Float64]),
                    TypeSignature::Exact(vec![DataType::Float64, DataType::Int64]),
                ],
                Volatility::Immutable,
            ),
        }
    }
}

fn digest_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)))
}

fn internal(msg: impl Into<String>) -> DataFusionError {
    DataFusionError::Internal(msg.into())
}

impl AggregateUDFImpl for DigestUdaf {
    fn name(&self) -> &str {
        "carflow_tdigest"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(digest_type())
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let size = match args.exprs.get(1) {
            None => DEFAULT_MAX_SIZE,
            // A literal (`percentile_call` takes no other): evaluated on no row.
            Some(e) => {
                let none = RecordBatch::new_empty(Arc::new(Schema::empty()));
                match e.evaluate(&none)? {
                    ColumnarValue::Scalar(ScalarValue::Int64(Some(n))) if n > 0 => n as usize,
                    _ => return Err(internal("carflow_tdigest takes a positive size")),
                }
            }
        };
        Ok(Box::new(DigestAccumulator(
            ApproxPercentileAccumulator::new_with_max_size(0.5, DataType::Float64, size),
        )))
    }

    /// The state of `approx_percentile_cont`.
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let f = |part: &str, t: DataType| {
            Arc::new(Field::new(format_state_name(args.name, part), t, false))
        };
        Ok(vec![
            f("max_size", DataType::UInt64),
            f("sum", DataType::Float64),
            f("count", DataType::Float64),
            f("max", DataType::Float64),
            f("min", DataType::Float64),
            Arc::new(Field::new_list(
                format_state_name(args.name, "centroids"),
                Field::new_list_field(DataType::Float64, true),
                false,
            )),
        ])
    }
}

/// `approx_percentile_cont`'s accumulator, evaluated to its whole digest.
#[derive(Debug)]
struct DigestAccumulator(ApproxPercentileAccumulator);

impl Accumulator for DigestAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.0.update_batch(&values[..1])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.0.merge_batch(states)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.0.state()
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let state = self.0.state()?;
        let mut flat = Vec::with_capacity(5);
        for s in &state[..5] {
            flat.push(match s {
                ScalarValue::UInt64(Some(n)) => *n as f64,
                ScalarValue::Float64(Some(v)) => *v,
                other => return Err(internal(format!("t-digest state {other:?}"))),
            });
        }
        let ScalarValue::List(centroids) = &state[5] else {
            return Err(internal("t-digest centroids are not a list"));
        };
        let centroids = centroids.values();
        let centroids = centroids.as_primitive::<Float64Type>();
        let values: Vec<ScalarValue> = flat
            .into_iter()
            .chain(centroids.values().iter().copied())
            .map(|v| ScalarValue::Float64(Some(v)))
            .collect();
        Ok(ScalarValue::List(ScalarValue::new_list_nullable(
            &values,
            &DataType::Float64,
        )))
    }

    fn size(&self) -> usize {
        self.0.size()
    }
}

/// `carflow_tdigest_quantile(digest, q)`: what `approx_percentile_cont(q)` gives for the values
/// of a [`carflow_tdigest`](DigestUdaf) digest (null for a digest of no value).
#[derive(Debug, PartialEq, Eq, Hash)]
struct QuantileUdf {
    signature: Signature,
}

impl QuantileUdf {
    fn new() -> Self {
        Self {
            signature: Signature::exact(
                vec![digest_type(), DataType::Float64],
                Volatility::Immutable,
            ),
        }
    }
}

impl ScalarUDFImpl for QuantileUdf {
    fn name(&self) -> &str {
        "carflow_tdigest_quantile"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let ColumnarValue::Scalar(ScalarValue::Float64(Some(q))) = &args.args[1] else {
            return Err(internal(
                "carflow_tdigest_quantile takes a constant quantile",
            ));
        };
        let digests = args.args[0].to_array(args.number_rows)?;
        let digests = digests.as_list::<i32>();
        let mut out = Float64Builder::with_capacity(digests.len());
        for i in 0..digests.len() {
            if digests.is_null(i) {
                out.append_null();
                continue;
            }
            let d = digests.value(i);
            let d: &Float64Array = d.as_primitive::<Float64Type>();
            match quantile(d.values(), *q)? {
                Some(v) => out.append_value(v),
                None => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// The `q` quantile of a flattened digest (`None` when it holds no value).
fn quantile(flat: &[f64], q: f64) -> Result<Option<f64>> {
    let [size, sum, count, max, min, centroids @ ..] = flat else {
        return Err(internal("a t-digest of the wrong length"));
    };
    if !centroids.len().is_multiple_of(2) {
        return Err(internal("a t-digest of the wrong length"));
    }
    if *count == 0.0 {
        return Ok(None);
    }
    let centroids = centroids
        .chunks(2)
        .map(|c| Centroid::new(c[0], c[1]))
        .collect();
    let digest = TDigest::try_from_parts(*size as usize, *sum, *count, *max, *min, centroids)?;
    Ok(Some(digest.estimate_quantile(q)))
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::transform::Planner;

    /// Run `plan` over `rows` as the `transactions` table.
    async fn run(planner: &Planner, plan: &LogicalPlan, rows: RecordBatch) -> Vec<RecordBatch> {
        planner.batch.set(vec![rows]);
        let ctx: &SessionContext = &planner.batch_ctx;
        ctx.execute_logical_plan(plan.clone())
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()
    }

    fn rows() -> RecordBatch {
        let mut g = crate::generator::Generator::new(crate::generator::GeneratorConfig {
            seed: 11,
            ..Default::default()
        });
        let lines: Vec<Vec<u8>> = (0..20_000)
            .map(|_| g.next_transaction().to_json().into_bytes())
            .collect();
        let messages: Vec<crate::source::Message> = lines
            .into_iter()
            .enumerate()
            .map(|(i, payload)| crate::source::Message {
                topic: Arc::from("t"),
                partition: (i % 3) as i32,
                offset: i as i64,
                timestamp_ms: None,
                payload: Some(payload.into()),
            })
            .collect();
        crate::batcher::decode_batch(&messages, 1 << 20)
            .unwrap()
            .rows
    }

    #[tokio::test]
    async fn shared_digests_give_exactly_the_percentiles_of_separate_ones() {
        let planner = Planner::new().unwrap();
        let sql = "INSERT INTO influx.p SELECT date_bin(INTERVAL '5 minutes', sold_at) AS time, condition, \
            count(*) AS sales, \
            approx_percentile_cont(0.25) WITHIN GROUP (ORDER BY CAST(price AS DOUBLE)) AS p25, \
            approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY CAST(price AS DOUBLE)) AS p50, \
            approx_percentile_cont(0.9) WITHIN GROUP (ORDER BY CAST(price AS DOUBLE) DESC) AS p10, \
            approx_percentile_cont(CAST(mileage_km AS DOUBLE), 0.5) AS km50, \
            approx_percentile_cont(CAST(mileage_km AS DOUBLE), 0.75) AS km75, \
            approx_percentile_cont(CAST(mileage_km AS DOUBLE), 0.75, 50) AS km75_small \
            FROM transactions GROUP BY 1, 2 ORDER BY 1, 2";
        let t = planner
            .plan_file(std::path::Path::new("p.sql"), sql)
            .await
            .unwrap();
        let shared = share(&t.plan)
            .unwrap()
            .expect("the percentiles share digests");
        let text = shared.display_indent().to_string();
        let aggregate = text
            .lines()
            .find(|l| l.trim_start().starts_with("Aggregate:"))
            .unwrap();
        // The price's three share a digest, the mileage's two of the default size another; the
        // one of another size keeps its own.
        assert_eq!(aggregate.matches("carflow_tdigest(").count(), 2, "{text}");
        assert_eq!(
            aggregate.matches("approx_percentile_cont(").count(),
            1,
            "{text}"
        );
        let rows = rows();
        let want = run(&planner, &t.plan, rows.clone()).await;
        let got = run(&planner, &shared, rows).await;
        assert_eq!(
            arrow::util::pretty::pretty_format_batches(&want)
                .unwrap()
                .to_string(),
            arrow::util::pretty::pretty_format_batches(&got)
                .unwrap()
                .to_string()
        );
        assert_eq!(want[0].schema(), got[0].schema());
    }

    #[tokio::test]
    async fn a_single_percentile_is_left_as_written() {
        let planner = Planner::new().unwrap();
        let sql = "INSERT INTO influx.p SELECT date_bin(INTERVAL '5 minutes', sold_at) AS time, \
            approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY CAST(price AS DOUBLE)) AS p50, \
            approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY CAST(mileage_km AS DOUBLE)) AS km50 \
            FROM transactions GROUP BY 1";
        let t = planner
            .plan_file(std::path::Path::new("p.sql"), sql)
            .await
            .unwrap();
        assert!(share(&t.plan).unwrap().is_none());
        assert_eq!(fingerprint(&t.plan, "f".into()), "f");
    }
}
