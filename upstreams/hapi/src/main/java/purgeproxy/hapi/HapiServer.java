package purgeproxy.hapi;

import ca.uhn.fhir.rest.server.RestfulServer;
import org.eclipse.jetty.ee10.servlet.ServletContextHandler;
import org.eclipse.jetty.ee10.servlet.ServletHolder;
import org.eclipse.jetty.server.Server;
import org.springframework.context.annotation.AnnotationConfigApplicationContext;

import java.io.IOException;
import java.net.InetSocketAddress;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Comparator;
import java.util.Properties;
import java.util.stream.Stream;

/**
 * Entry point: {@code java -jar hapi-upstream.jar [PORT [DATA_DIR]]}.
 * Starts the Spring context from {@link HapiConfig} and serves its RestfulServer
 * with embedded Jetty under {@code hapi.base_path} (default {@code /fhir}).
 */
public final class HapiServer {

	private static final org.slf4j.Logger ourLog = org.slf4j.LoggerFactory.getLogger(HapiServer.class);

	private HapiServer() {}

	public static void main(String[] theArgs) throws Exception {
		long started = System.nanoTime();
		if (theArgs.length > 0) {
			System.setProperty("hapi.port", theArgs[0]);
		}
		if (theArgs.length > 1) {
			System.setProperty("hapi.data_dir", theArgs[1]);
		}
		Properties defaults = new Properties();
		try (var in = HapiServer.class.getResourceAsStream("/hapi.properties")) {
			defaults.load(in);
		}
		String dataDir = System.getProperty("hapi.data_dir", defaults.getProperty("hapi.data_dir", "")).trim();
		if (dataDir.isEmpty()) {
			// No directory given: use a fresh one so the run starts clean, and remove it afterwards.
			Path tmp = Files.createTempDirectory("hapi-upstream-");
			System.setProperty("hapi.data_dir", tmp.toString());
			Runtime.getRuntime().addShutdownHook(new Thread(() -> deleteTree(tmp)));
		} else {
			Files.createDirectories(Path.of(dataDir));
			System.setProperty("hapi.data_dir", dataDir);
		}

		AnnotationConfigApplicationContext ctx = new AnnotationConfigApplicationContext(HapiConfig.class);
		String host = ctx.getEnvironment().getRequiredProperty("hapi.host").trim();
		int port = Integer.parseInt(ctx.getEnvironment().getRequiredProperty("hapi.port").trim());
		String basePath = ctx.getEnvironment().getRequiredProperty("hapi.base_path").trim();

		ServletContextHandler handler = new ServletContextHandler();
		handler.setContextPath("/");
		ServletHolder holder = new ServletHolder("fhir", ctx.getBean(RestfulServer.class));
		holder.setInitOrder(1);
		handler.addServlet(holder, basePath + "/*");

		Server jetty = new Server(new InetSocketAddress(host, port));
		jetty.setHandler(handler);
		jetty.setStopAtShutdown(true);
		Runtime.getRuntime().addShutdownHook(new Thread(ctx::close));
		jetty.start();
		ourLog.info(
				"HAPI FHIR upstream ready at http://{}:{}{} (data dir {}) after {} ms",
				host,
				port,
				basePath,
				System.getProperty("hapi.data_dir"),
				(System.nanoTime() - started) / 1_000_000);
		jetty.join();
	}

	private static void deleteTree(Path theRoot) {
		try (Stream<Path> paths = Files.walk(theRoot)) {
			paths.sorted(Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
		} catch (IOException e) {
			// best effort: it lives in the temp directory anyway
		}
	}
}
