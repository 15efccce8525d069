//! Real partitions between node processes: one network namespace per node, each joined by a
//! veth pair to a bridge in the root namespace (where the test runs, and reaches every node's
//! API through the bridge's address). A partition is a pair of policy-routing blackhole rules
//! (`ip rule add pref 10 from PEER blackhole` in each side's namespace): packets are dropped
//! silently on arrival, TCP stalls as with a cut cable, and the test's own traffic (from the
//! bridge address) still reaches both sides. Each namespace moves the `local` table's rule from
//! preference 0 to 100, so that the blackhole rules come first. This kernel has no netem and no
//! iptables/nft (../shared/design/CHAOS.md).
//!
//! [`Net::create`] probes (the `ip` binary, root, a namespace and a bridge can be made) and
//! returns `None` where that fails: the tests then fall back to [`crate::proxy`] or say what
//! they skipped. Everything made is deleted when the [`Net`] drops (namespaces take their veth
//! ends with them), and names left by an earlier run that died are deleted before use.
//!
//! `TROUPE_TEST_NO_NETNS=1` makes [`Net::create`] fail, to run the fallbacks on a machine
//! that has namespaces.
//!
//! Addresses: node `i` (0-based) of net `id` is `10.213.ID.(i+1)`, the bridge `10.213.ID.254`.

use crate::{Cluster, TestNode};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Net {
    pub id: u8,
    nodes: usize,
    bridge: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Net {
    /// The namespace of node `i`.
    pub fn ns(&self, i: usize) -> String {
        format!("troupe-{}-{}", self.id, i + 1)
    }

    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.id, i as u8 + 1)
    }

    /// Makes `nodes` namespaces on bridge `trb<ID>`; `None` (with the reason printed) where
    /// this machine cannot.
    pub fn create(id: u8, nodes: usize) -> Option<Net> {
        assert!((1..=250).contains(&id) && nodes < 250);
        let net = Net {
            id,
            nodes,
            bridge: format!("trb{id}"),
        };
        net.cleanup();
        match net.build() {
            Ok(()) => Some(net),
            Err(e) => {
                eprintln!("network namespaces unavailable here ({e})");
                net.cleanup();
                None
            }
        }
    }

    fn build(&self) -> Result<(), String> {
        if std::env::var_os("TROUPE_TEST_NO_NETNS").is_some() {
            return Err("TROUPE_TEST_NO_NETNS is set".into());
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        let br = self.bridge.as_str();
        ip(&["link", "add", br, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("10.213.{}.254/24", self.id),
            "dev",
            br,
        ])?;
        ip(&["link", "set", br, "up"])?;
        for i in 0..self.nodes {
            let ns = self.ns(i);
            let (host, peer) = (self.veth(i), format!("trp{}-{}", self.id, i + 1));
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &host, "type", "veth", "peer", "name", &peer, "netns", &ns,
            ])?;
            ip(&["link", "set", &host, "master", br])?;
            ip(&["link", "set", &host, "up"])?;
            let a = format!("{}/24", self.addr(i));
            ip(&["-n", &ns, "addr", "add", &a, "dev", &peer])?;
            ip(&["-n", &ns, "link", "set", &peer, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "rule", "add", "pref", "100", "lookup", "local"])?;
            ip(&["-n", &ns, "rule", "del", "pref", "0"])?;
        }
        Ok(())
    }

    fn veth(&self, i: usize) -> String {
        format!("trv{}-{}", self.id, i + 1)
    }

    fn cleanup(&self) {
        for i in 0..self.nodes {
            let _ = ip(&["netns", "del", &self.ns(i)]);
            let _ = ip(&["link", "del", &self.veth(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }

    fn rule(&self, op: &str, at: usize, from: usize) -> Result<(), String> {
        let pref = format!("{}", 10 + from);
        let src = self.addr(from).to_string();
        ip(&[
            "-n",
            &self.ns(at),
            "rule",
            op,
            "pref",
            &pref,
            "from",
            &src,
            "blackhole",
        ])
    }

    /// Cuts every path between a node of `a` and a node of `b` (both ways).
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                self.rule("add", x, y).expect("partition");
                self.rule("add", y, x).expect("partition");
            }
        }
    }

    /// Cuts node `i` from every other node (the test still reaches it).
    pub fn isolate(&self, i: usize) {
        let others: Vec<usize> = (0..self.nodes).filter(|&j| j != i).collect();
        self.partition(&[i], &others);
    }

    /// Removes every partition.
    pub fn heal(&self) {
        for at in 0..self.nodes {
            for from in 0..self.nodes {
                let _ = self.rule("del", at, from);
            }
        }
    }

    /// The command prefix that runs a process in node `i`'s namespace.
    pub fn exec_prefix(&self, i: usize) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns(i)]
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Where a test's nodes run: loopback addresses `127.0.ID.(i+1)` in the root namespace, or
/// one namespace per node ([`Net`]).
pub enum Fabric {
    Loopback(u8),
    Netns(Net),
}

impl Fabric {
    /// Namespaces where they can be made, else loopback; prints which.
    pub fn best(id: u8, nodes: usize) -> Fabric {
        let f = match Net::create(id, nodes) {
            Some(n) => Fabric::Netns(n),
            None => Fabric::Loopback(id),
        };
        eprintln!("fabric: {}", f.name());
        f
    }

    pub fn name(&self) -> &'static str {
        match self {
            Fabric::Loopback(_) => "loopback (no namespaces)",
            Fabric::Netns(_) => "network namespaces + veth + bridge",
        }
    }

    pub fn net(&self) -> Option<&Net> {
        match self {
            Fabric::Netns(n) => Some(n),
            Fabric::Loopback(_) => None,
        }
    }

    pub fn ip(&self, i: usize) -> String {
        match self {
            Fabric::Netns(n) => n.addr(i).to_string(),
            Fabric::Loopback(id) => format!("127.0.{id}.{}", i + 1),
        }
    }

    /// The arguments of node `i` (0-based) of a cluster whose servers are the first
    /// `servers`; its data in `dir/n<i+1>`.
    pub fn args(&self, dir: &Path, i: usize, role: &str, servers: usize) -> Vec<String> {
        let join: Vec<String> = (0..servers)
            .map(|j| format!("{}:7500", self.ip(j)))
            .collect();
        let mut args: Vec<String> = ["node", role].iter().map(|s| s.to_string()).collect();
        args.extend([
            "--listen".into(),
            format!("{}:7500", self.ip(i)),
            "--join".into(),
            join.join(","),
            "--api-listen".into(),
            format!("{}:7600", self.ip(i)),
            "--data".into(),
            dir.join(format!("n{}", i + 1)).display().to_string(),
        ]);
        if self.net().is_some() {
            // Reachable only from this test's namespaces and bridge.
            args.push("--insecure-api".into());
        }
        args
    }

    /// Starts node `i` (waits for its API only).
    pub fn spawn(&self, dir: &Path, i: usize, args: &[String], env: &[(&str, &str)]) -> TestNode {
        let wrap = self.net().map(|n| n.exec_prefix(i)).unwrap_or_default();
        let data = dir.join(format!("n{}", i + 1));
        TestNode::spawn_wrapped(&wrap, &data, args, false, env, None)
    }

    /// Starts node `i` of a cluster of `servers` servers with `extra` arguments.
    pub fn start_node(
        &self,
        dir: &Path,
        i: usize,
        servers: usize,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> TestNode {
        let role = if i < servers { "--server" } else { "--worker" };
        let mut args = self.args(dir, i, role, servers);
        args.extend(extra.iter().map(|s| s.to_string()));
        self.spawn(dir, i, &args, env)
    }

    /// `servers` servers and `workers` workers, every one with `extra`; returns once every
    /// node is up.
    pub fn cluster(&self, dir: &Path, servers: usize, workers: usize, extra: &[&str]) -> Cluster {
        let nodes: Vec<TestNode> = (0..servers + workers)
            .map(|i| self.start_node(dir, i, servers, extra, &[]))
            .collect();
        let mut nodes = nodes.into_iter();
        let cluster = Cluster {
            servers: nodes.by_ref().take(servers).collect(),
            workers: nodes.collect(),
        };
        wait_up(&cluster, servers + workers, Duration::from_secs(60));
        cluster
    }
}

/// Waits (bounded) until `want` nodes are up, as any server sees it.
pub fn wait_up(cluster: &Cluster, want: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        for s in &cluster.servers {
            let (code, v) = s.get("/v1/nodes");
            let up = v["nodes"]
                .as_array()
                .map(|a| a.iter().filter(|n| n["status"] == "up").count())
                .unwrap_or(0);
            if code == 200 && up >= want {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not form in {limit:?}: {}",
            cluster.servers[0].log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn connect(net: &Net, from: usize, to: Ipv4Addr, port: u16) -> bool {
        let code = format!(
            "import socket\ntry:\n  socket.create_connection(('{to}',{port}),timeout=1); print('ok')\nexcept Exception as e: print(e)"
        );
        let out = Command::new("ip")
            .args(["netns", "exec", &net.ns(from), "python3", "-c", &code])
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).trim() == "ok")
            .unwrap_or(false)
    }

    #[test]
    fn namespaces_partition_and_heal_and_clean_up() {
        let Some(net) = Net::create(249, 2) else {
            eprintln!("skipped: no network namespaces");
            return;
        };
        if Command::new("python3").arg("-V").output().is_err() {
            eprintln!("skipped: no python3 to connect from inside a namespace");
            return;
        }
        // A listener in the root namespace on the bridge address: both nodes reach it.
        let l = std::net::TcpListener::bind(("10.213.249.254", 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let bridge = Ipv4Addr::new(10, 213, 249, 254);
        assert!(connect(&net, 0, bridge, port));
        // Node 1 listens (through python in its namespace) and node 0 reaches it until cut.
        let mut server = Command::new("ip")
            .args(["netns", "exec", &net.ns(1), "python3", "-c"])
            .arg("import socket,time\ns=socket.socket()\ns.bind(('10.213.249.2',9911))\ns.listen(16)\nprint('up',flush=True)\ntime.sleep(20)")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut up = [0u8; 2];
        server.stdout.as_mut().unwrap().read_exact(&mut up).unwrap();
        assert!(connect(&net, 0, net.addr(1), 9911), "before the partition");
        net.partition(&[0], &[1]);
        assert!(!connect(&net, 0, net.addr(1), 9911), "during the partition");
        assert!(
            connect(&net, 0, bridge, port),
            "the test still reaches node 0"
        );
        let mut direct = std::net::TcpStream::connect_timeout(
            &(net.addr(1), 9911).into(),
            Duration::from_secs(1),
        )
        .expect("the test still reaches node 1");
        let _ = direct.write_all(b"x");
        net.heal();
        assert!(connect(&net, 0, net.addr(1), 9911), "after heal");
        let _ = server.kill();
        let _ = server.wait();
        let ns = net.ns(0);
        drop(net);
        let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
        assert!(!String::from_utf8_lossy(&list.stdout).contains(&ns));
    }
}
