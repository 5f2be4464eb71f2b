//! Client-side fan-out: one operation on many nodes concurrently, one result per node in
//! the order the nodes were given. A dead or failing node never fails the others.

use std::future::Future;

/// The outcome of an operation on one node.
#[derive(Debug)]
pub struct NodeResult<T, E> {
    /// The node as given (`host[:port]`).
    pub node: String,
    /// What the operation returned.
    pub result: Result<T, E>,
}

/// Runs `op` on every node concurrently and returns the results in `nodes` order.
pub async fn fan_out<T, E, F, Fut>(nodes: &[String], op: F) -> Vec<NodeResult<T, E>>
where
    T: Send + 'static,
    E: Send + 'static + From<String>,
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    let handles: Vec<_> = nodes
        .iter()
        .map(|node| (node.clone(), tokio::spawn(op(node.clone()))))
        .collect();
    let mut results = Vec::with_capacity(handles.len());
    for (node, handle) in handles {
        let result = match handle.await {
            Ok(r) => r,
            Err(e) => Err(E::from(format!("task for {node} failed: {e}"))),
        };
        results.push(NodeResult { node, result });
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_order_and_isolates_failures() {
        let nodes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let results = fan_out(&nodes, |n| async move {
            if n == "b" {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                Err::<String, String>(format!("{n} is down"))
            } else {
                Ok(n.to_uppercase())
            }
        })
        .await;
        let got: Vec<_> = results
            .iter()
            .map(|r| (r.node.as_str(), r.result.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("a", Ok("A".into())),
                ("b", Err("b is down".into())),
                ("c", Ok("C".into()))
            ]
        );
    }
}
