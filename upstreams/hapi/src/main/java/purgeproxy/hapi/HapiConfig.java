package purgeproxy.hapi;

import ca.uhn.fhir.batch2.jobs.config.Batch2JobsConfig;
import ca.uhn.fhir.batch2.jobs.expunge.DeleteExpungeProvider;
import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.interceptor.api.IInterceptorBroadcaster;
import ca.uhn.fhir.jpa.api.config.JpaStorageSettings;
import ca.uhn.fhir.jpa.api.config.ThreadPoolFactoryConfig;
import ca.uhn.fhir.jpa.api.dao.DaoRegistry;
import ca.uhn.fhir.jpa.api.dao.IFhirSystemDao;
import ca.uhn.fhir.jpa.batch2.JpaBatch2Config;
import ca.uhn.fhir.jpa.binary.api.IBinaryStorageSvc;
import ca.uhn.fhir.jpa.binstore.MemoryBinaryStorageSvcImpl;
import ca.uhn.fhir.jpa.config.HapiJpaConfig;
import ca.uhn.fhir.jpa.config.r4.JpaR4Config;
import ca.uhn.fhir.jpa.config.util.HapiEntityManagerFactoryUtil;
import ca.uhn.fhir.jpa.delete.ThreadSafeResourceDeleterSvc;
import ca.uhn.fhir.jpa.interceptor.CascadingDeleteInterceptor;
import ca.uhn.fhir.jpa.model.config.PartitionSettings;
import ca.uhn.fhir.jpa.model.config.SubscriptionSettings;
import ca.uhn.fhir.jpa.model.dialect.HapiFhirH2Dialect;
import ca.uhn.fhir.jpa.provider.JpaCapabilityStatementProvider;
import ca.uhn.fhir.jpa.provider.JpaSystemProvider;
import ca.uhn.fhir.jpa.search.DatabaseBackedPagingProvider;
import ca.uhn.fhir.jpa.subscription.channel.config.SubscriptionChannelConfig;
import ca.uhn.fhir.rest.api.PreferHandlingEnum;
import ca.uhn.fhir.rest.server.ApacheProxyAddressStrategy;
import ca.uhn.fhir.rest.server.IServerAddressStrategy;
import ca.uhn.fhir.rest.server.IncomingRequestAddressStrategy;
import ca.uhn.fhir.rest.server.RestfulServer;
import ca.uhn.fhir.rest.server.interceptor.SearchPreferHandlingInterceptor;
import ca.uhn.fhir.rest.server.provider.ResourceProviderFactory;
import ca.uhn.fhir.rest.server.util.ISearchParamRegistry;
import jakarta.persistence.EntityManagerFactory;
import org.apache.commons.dbcp2.BasicDataSource;
import org.springframework.beans.factory.config.ConfigurableListableBeanFactory;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Import;
import org.springframework.context.annotation.Lazy;
import org.springframework.context.annotation.Primary;
import org.springframework.context.annotation.PropertySource;
import org.springframework.core.env.Environment;
import org.springframework.orm.jpa.JpaTransactionManager;
import org.springframework.orm.jpa.LocalContainerEntityManagerFactoryBean;
import org.springframework.transaction.annotation.EnableTransactionManagement;

import javax.sql.DataSource;
import java.nio.file.Path;
import java.util.Properties;

/**
 * Spring wiring of the HAPI FHIR JPA server (R4, H2). Every tunable comes from
 * {@code hapi.properties} (system properties override it), so the behaviour the
 * purgeproxy tests rely on is visible in one file.
 */
@Configuration
@EnableTransactionManagement
@PropertySource("classpath:hapi.properties")
@Import({
	JpaR4Config.class,
	HapiJpaConfig.class,
	JpaBatch2Config.class,
	Batch2JobsConfig.class,
	// in-memory message broker; batch2 (used by $delete-expunge) needs it
	SubscriptionChannelConfig.class,
	ThreadPoolFactoryConfig.class
})
public class HapiConfig {

	private static final org.slf4j.Logger ourLog = org.slf4j.LoggerFactory.getLogger(HapiConfig.class);

	private final Environment myEnv;

	public HapiConfig(Environment theEnv) {
		myEnv = theEnv;
	}

	private boolean flag(String theKey) {
		return Boolean.parseBoolean(myEnv.getRequiredProperty(theKey).trim());
	}

	private int number(String theKey) {
		return Integer.parseInt(myEnv.getRequiredProperty(theKey).trim());
	}

	@Bean
	public JpaStorageSettings storageSettings() {
		JpaStorageSettings retVal = new JpaStorageSettings();
		retVal.setExpungeEnabled(flag("hapi.expunge_enabled"));
		retVal.setDeleteExpungeEnabled(flag("hapi.delete_expunge_enabled"));
		retVal.setAllowMultipleDelete(flag("hapi.allow_multiple_delete"));
		retVal.setEnforceReferentialIntegrityOnDelete(flag("hapi.enforce_referential_integrity_on_delete"));
		retVal.setFetchSizeDefaultMaximum(number("hapi.paging.max_page_size"));
		ourLog.info(
				"Storage settings: expunge={} deleteExpunge={} multipleDelete={} refIntegrityOnDelete={}",
				retVal.isExpungeEnabled(),
				retVal.isDeleteExpungeEnabled(),
				retVal.isAllowMultipleDelete(),
				retVal.isEnforceReferentialIntegrityOnDelete());
		return retVal;
	}

	@Bean
	public PartitionSettings partitionSettings() {
		return new PartitionSettings();
	}

	@Bean
	public SubscriptionSettings subscriptionSettings() {
		return new SubscriptionSettings();
	}

	@Bean(destroyMethod = "close")
	public BasicDataSource dataSource() {
		Path dbFile = Path.of(myEnv.getRequiredProperty("hapi.data_dir"), "h2", "hapi");
		BasicDataSource retVal = new BasicDataSource();
		retVal.setDriver(new org.h2.Driver());
		// DB_CLOSE_ON_EXIT=FALSE: let Spring close the pool, not H2's own shutdown hook.
		retVal.setUrl("jdbc:h2:file:" + dbFile.toAbsolutePath() + ";DB_CLOSE_ON_EXIT=FALSE");
		retVal.setUsername("sa");
		retVal.setPassword("");
		retVal.setMaxTotal(number("hapi.db.max_connections"));
		retVal.setMaxWait(java.time.Duration.ofSeconds(30));
		return retVal;
	}

	@Primary
	@Bean
	public LocalContainerEntityManagerFactoryBean entityManagerFactory(
			ConfigurableListableBeanFactory theBeanFactory,
			FhirContext theFhirContext,
			JpaStorageSettings theStorageSettings,
			DataSource theDataSource) {
		LocalContainerEntityManagerFactoryBean retVal =
				HapiEntityManagerFactoryUtil.newEntityManagerFactory(theBeanFactory, theFhirContext, theStorageSettings);
		retVal.setPersistenceUnitName("HAPI_PU");
		retVal.setDataSource(theDataSource);
		Properties jpa = new Properties();
		jpa.put("hibernate.dialect", HapiFhirH2Dialect.class.getName());
		jpa.put("hibernate.hbm2ddl.auto", "update");
		jpa.put("hibernate.format_sql", "false");
		jpa.put("hibernate.show_sql", "false");
		jpa.put("hibernate.search.enabled", "false");
		retVal.setJpaProperties(jpa);
		return retVal;
	}

	@Primary
	@Bean
	public JpaTransactionManager transactionManager(EntityManagerFactory theEntityManagerFactory) {
		JpaTransactionManager retVal = new JpaTransactionManager();
		retVal.setEntityManagerFactory(theEntityManagerFactory);
		return retVal;
	}

	@Lazy
	@Bean
	public IBinaryStorageSvc binaryStorageSvc() {
		return new MemoryBinaryStorageSvcImpl();
	}

	private IServerAddressStrategy addressStrategy() {
		String strategy = myEnv.getRequiredProperty("hapi.address_strategy").trim();
		switch (strategy) {
			case "apache_proxy_http":
				return ApacheProxyAddressStrategy.forHttp();
			case "apache_proxy_https":
				return ApacheProxyAddressStrategy.forHttps();
			case "incoming":
				return new IncomingRequestAddressStrategy();
			default:
				throw new IllegalArgumentException("Unknown hapi.address_strategy: " + strategy);
		}
	}

	@Bean
	public RestfulServer restfulServer(
			IFhirSystemDao<?, ?> theSystemDao,
			DaoRegistry theDaoRegistry,
			ResourceProviderFactory theResourceProviders,
			JpaSystemProvider<?, ?> theSystemProvider,
			DeleteExpungeProvider theDeleteExpungeProvider,
			JpaStorageSettings theStorageSettings,
			ISearchParamRegistry theSearchParamRegistry,
			IValidationSupport theValidationSupport,
			DatabaseBackedPagingProvider thePagingProvider,
			IInterceptorBroadcaster theInterceptorBroadcaster,
			ThreadSafeResourceDeleterSvc theResourceDeleter) {
		FhirContext ctx = theSystemDao.getContext();
		RestfulServer server = new RestfulServer(ctx);

		// Resource providers carry CRUD, search, history and type/instance $expunge;
		// the system provider carries system $expunge, transaction/batch and _history.
		server.registerProviders(theResourceProviders.createProviders());
		server.registerProvider(theSystemProvider);
		// $delete-expunge (batch2 job) is a separate provider.
		server.registerProvider(theDeleteExpungeProvider);

		JpaCapabilityStatementProvider capabilities = new JpaCapabilityStatementProvider(
				server, theSystemDao, theStorageSettings, theSearchParamRegistry, theValidationSupport);
		capabilities.setImplementationDescription("purgeproxy test upstream (HAPI FHIR JPA, R4)");
		server.setServerConformanceProvider(capabilities);

		thePagingProvider.setDefaultPageSize(number("hapi.paging.default_page_size"));
		thePagingProvider.setMaximumPageSize(number("hapi.paging.max_page_size"));
		server.setPagingProvider(thePagingProvider);

		server.setServerAddressStrategy(addressStrategy());

		SearchPreferHandlingInterceptor preferHandling = new SearchPreferHandlingInterceptor(theSearchParamRegistry);
		preferHandling.setDefaultBehaviour(PreferHandlingEnum.fromHeaderValue(
				myEnv.getRequiredProperty("hapi.search.default_handling").trim()));
		server.registerInterceptor(preferHandling);

		if (flag("hapi.cascading_deletes")) {
			server.registerInterceptor(new CascadingDeleteInterceptor(
					ctx, theDaoRegistry, theInterceptorBroadcaster, theResourceDeleter));
		}
		return server;
	}
}
