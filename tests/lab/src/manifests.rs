//! Service manifests for the daemon's `--services-file`, and the file itself (removed on drop).

use anyhow::Result;

use crate::sys::TempFile;

/// A Service with a ClusterIP and one ready endpoint, as `kubectl get -o yaml` would show it.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The ClusterIP.
    pub cluster_ip: String,
    /// The Service port.
    pub port: u16,
    /// The endpoint's address.
    pub endpoint_ip: String,
    /// The endpoint's (target) port.
    pub endpoint_port: u16,
    /// The `projectcalico.org/l7-logging` value, if annotated.
    pub annotation: Option<String>,
}

impl ServiceSpec {
    /// The same Service with another annotation value (`None`: no annotation).
    pub fn annotated(&self, value: Option<&str>) -> Self {
        Self {
            annotation: value.map(str::to_string),
            ..self.clone()
        }
    }

    /// The Service and its EndpointSlice as a two-document YAML stream.
    pub fn yaml(&self) -> String {
        self.yaml_with_endpoints(&[])
    }

    /// [`ServiceSpec::yaml`] with more ready endpoint addresses (same port) in the slice.
    pub fn yaml_with_endpoints(&self, more: &[&str]) -> String {
        let Self {
            namespace,
            name,
            cluster_ip,
            port,
            endpoint_ip,
            endpoint_port,
            annotation,
        } = self;
        let addresses = std::iter::once(endpoint_ip.as_str())
            .chain(more.iter().copied())
            .collect::<Vec<_>>()
            .join(", ");
        let annotations = match annotation {
            Some(v) => format!("\n  annotations:\n    projectcalico.org/l7-logging: \"{v}\""),
            None => String::new(),
        };
        format!(
            "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}{annotations}
spec:
  clusterIP: {cluster_ip}
  clusterIPs: [{cluster_ip}]
  ports: [{{port: {port}, targetPort: {endpoint_port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-x1
  namespace: {namespace}
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
endpoints: [{{addresses: [{addresses}], conditions: {{ready: true}}}}]
ports: [{{port: {endpoint_port}, protocol: TCP}}]
"
        )
    }
}

/// A services file in the temporary directory, removed on drop.
pub struct ServicesFile(TempFile);

impl ServicesFile {
    /// Creates it with `text`.
    pub fn new(text: &str) -> Result<Self> {
        let file = TempFile::new("services.yaml");
        std::fs::write(&file.0, text)?;
        Ok(Self(file))
    }

    /// Replaces its contents (in place, as an editor that truncates would).
    pub fn write(&self, text: &str) -> Result<()> {
        Ok(std::fs::write(&self.0.0, text)?)
    }

    /// Its path, as a command-line argument.
    pub fn arg(&self) -> &str {
        self.0.arg()
    }
}
