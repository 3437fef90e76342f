package carflow;

import java.io.File;
import java.io.FileOutputStream;
import java.io.OutputStream;
import java.util.concurrent.CountDownLatch;

import sun.misc.Signal;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.SafeModeAction;
import org.apache.hadoop.fs.permission.FsPermission;
import org.apache.hadoop.hdfs.DistributedFileSystem;
import org.apache.hadoop.hdfs.HdfsConfiguration;
import org.apache.hadoop.hdfs.MiniDFSCluster;

/**
 * A single-namenode, single-datanode HDFS for carflow development and tests, listening on 127.0.0.1 only.
 *
 * <p>Usage: {@code java -cp carflow-minihdfs.jar:libs/* carflow.MiniHdfs [options]}
 *
 * <pre>
 *   --base-dir DIR     where the name and data directories live (default ./minihdfs)
 *   --port N           namenode RPC port (default 9000)
 *   --http-port N      namenode HTTP / WebHDFS port (default 9870)
 *   --format           always start from an empty file system (default: keep the data of a previous run)
 * </pre>
 *
 * <p>Prints exactly one line starting with {@code READY } on stdout once the namenode is active, the
 * datanode registered and safe mode is off; everything else goes to stderr (log4j). It then runs until it
 * gets SIGTERM/SIGINT (stdin is not read, so it keeps running in the background), then shuts the cluster
 * down cleanly and exits 0.
 */
public final class MiniHdfs {

    private MiniHdfs() {}

    public static void main(String[] args) throws Exception {
        String baseDir = "minihdfs";
        int port = 9000;
        int httpPort = 9870;
        boolean forceFormat = false;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--base-dir": baseDir = args[++i]; break;
                case "--port": port = Integer.parseInt(args[++i]); break;
                case "--http-port": httpPort = Integer.parseInt(args[++i]); break;
                case "--format": forceFormat = true; break;
                default:
                    System.err.println("unknown argument: " + args[i]);
                    System.exit(2);
            }
        }

        File base = new File(baseDir).getAbsoluteFile();
        // Keep the namenode image and the blocks of a previous run (MiniDFSCluster names its namenode
        // directories name1/name2 or name-0-1/name-0-2 depending on the Hadoop version) unless asked not to.
        boolean format = forceFormat || !hasFormattedNameDir(base);

        Configuration conf = new HdfsConfiguration();
        conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, base.getPath());
        conf.setBoolean("dfs.permissions.enabled", false);
        conf.setInt("dfs.replication", 1);
        conf.setInt("dfs.namenode.replication.min", 1);
        conf.setLong("dfs.blocksize", 16L * 1024 * 1024);
        // Bind everything to loopback. MiniDFSCluster sets the namenode RPC/HTTP addresses itself
        // (127.0.0.1:port); the datanode keys are honoured because of checkDataNodeAddrConfig(true).
        conf.set("dfs.namenode.rpc-address", "127.0.0.1:" + port);
        conf.set("dfs.namenode.http-address", "127.0.0.1:" + httpPort);
        conf.set("dfs.namenode.https-address", "127.0.0.1:0");
        conf.set("dfs.namenode.secondary.http-address", "127.0.0.1:0");
        conf.set("dfs.namenode.secondary.https-address", "127.0.0.1:0");
        conf.set("dfs.namenode.backup.address", "127.0.0.1:0");
        conf.set("dfs.namenode.backup.http-address", "127.0.0.1:0");
        conf.set("dfs.datanode.address", "127.0.0.1:0");
        conf.set("dfs.datanode.http.address", "127.0.0.1:0");
        conf.set("dfs.datanode.https.address", "127.0.0.1:0");
        conf.set("dfs.datanode.ipc.address", "127.0.0.1:0");
        conf.set("dfs.datanode.hostname", "127.0.0.1");
        conf.set("dfs.journalnode.rpc-address", "127.0.0.1:0");
        conf.set("dfs.journalnode.http-address", "127.0.0.1:0");
        conf.set("dfs.journalnode.https-address", "127.0.0.1:0");
        conf.set("dfs.http.policy", "HTTP_ONLY");
        conf.setBoolean("dfs.webhdfs.enabled", true);
        conf.set("hadoop.http.staticuser.user", System.getProperty("user.name", "root"));
        // Quicker startup and safe mode exit for a one-node cluster.
        conf.setInt("dfs.namenode.safemode.extension", 0);
        conf.setInt("dfs.heartbeat.interval", 1);
        conf.set("fs.defaultFS", "hdfs://127.0.0.1:" + port);

        // SIGTERM/SIGINT only release the main thread, which then shuts the cluster down outside of JVM
        // shutdown (Hadoop's own shutdown hooks cannot be removed while the JVM is shutting down).
        CountDownLatch stop = new CountDownLatch(1);
        Signal.handle(new Signal("TERM"), sig -> stop.countDown());
        Signal.handle(new Signal("INT"), sig -> stop.countDown());

        MiniDFSCluster cluster = new MiniDFSCluster.Builder(conf)
                .nameNodePort(port)
                .nameNodeHttpPort(httpPort)
                .numDataNodes(1)
                .format(format)
                .manageNameDfsDirs(true)
                .manageDataDfsDirs(true)
                .checkDataNodeAddrConfig(true)
                .checkDataNodeHostConfig(true)
                .waitSafeMode(true)
                .build();

        cluster.waitActive();
        DistributedFileSystem fs = cluster.getFileSystem();
        if (fs.isInSafeMode()) {
            fs.setSafeMode(SafeModeAction.LEAVE);
        }
        // Writable by any client user (permissions are off anyway).
        fs.setPermission(new Path("/"), new FsPermission((short) 0777));

        // A client configuration for tools such as org.apache.hadoop.fs.FsShell.
        Configuration clientConf = new Configuration(false);
        clientConf.set("fs.defaultFS", "hdfs://127.0.0.1:" + port);
        clientConf.set("dfs.replication", "1");
        try (OutputStream out = new FileOutputStream(new File(base, "core-site.xml"))) {
            clientConf.writeXml(out);
        }

        System.out.println("READY hdfs://127.0.0.1:" + port + " http://127.0.0.1:" + httpPort
                + " datanodes=" + cluster.getDataNodes().size() + " formatted=" + format);
        System.out.flush();

        // Stay up (stdin is not read) until SIGTERM/SIGINT.
        stop.await();
        System.err.println("carflow.MiniHdfs: signal received, shutting down");
        int code = 0;
        try {
            // Not cluster.shutdown(): that schedules the whole base directory for deletion at JVM exit,
            // and the data is meant to survive a restart.
            fs.close();
            cluster.shutdownDataNodes();
            cluster.shutdownNameNodes();
        } catch (Throwable t) {
            t.printStackTrace();
            code = 1;
        }
        System.err.println("carflow.MiniHdfs: stopped");
        System.exit(code);
    }

    private static boolean hasFormattedNameDir(File base) {
        File[] dirs = base.listFiles((dir, name) -> name.startsWith("name"));
        if (dirs == null) {
            return false;
        }
        for (File d : dirs) {
            if (new File(d, "current/VERSION").isFile()) {
                return true;
            }
        }
        return false;
    }
}
