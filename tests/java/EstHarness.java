/*
 * EstHarness: drives Bouncy Castle's EST client (bcpkix, org.bouncycastle.est)
 * against an EST server, for estproto's interop tests (issue 5).
 *
 * The test compiles this one file with javac against the Debian jars
 * (bcprov, bcutil, bcpkix, bctls) and runs one subcommand per operation:
 *
 *   cacerts        ESTService.getCACerts()                       RFC 7030 4.1
 *   enroll         ESTService.simpleEnroll(false, csr, auth)     RFC 7030 4.2
 *   reenroll       ESTService.simpleEnroll(true, csr, auth) with a  RFC 7030 4.2.2
 *                  TLS client certificate from --client-dir
 *   enroll-pop     ESTService.simpleEnrollPoP(false, ...) over   RFC 7030 3.5
 *                  BCJSSE, TLS 1.2, tls-unique from the socket
 *   serverkeygen   ESTService.simpleEnrollWithServersideCreation RFC 7030 4.4
 *   csrattrs       ESTService.getCSRAttributes()                 RFC 7030 4.5
 *
 * Options: --server HOST:PORT --trust CA.pem --out DIR [--user U --password P]
 * [--subject DN] [--tls TLSv1.2|TLSv1.3] [--jsse sun|bc] [--auth-kind plain|builder]
 * [--client-dir DIR] (TLS client certificate: DIR/cert.pem, DIR/key.pem).
 *
 * Bouncy Castle picks Basic or Digest itself from the server's first
 * WWW-Authenticate header, so "enroll with Basic" and "enroll with Digest"
 * are the same call against differently configured servers.
 *
 * Results are written as PEM/DER files in --out, so the Python test checks
 * them with openssl rather than trusting this program: pubkey.pem (the key
 * the harness generated), csr.pem (when the harness built the CSR itself),
 * cert.pem (what the server issued), key.pem (serverkeygen's PKCS#8 key),
 * cacerts.pem, csrattrs.der. One summary line goes to stdout; on failure the
 * exit status is 2 and stdout says "error status=<HTTP status> body=<the
 * server's reason> ...". With --jsse bc, stderr gets one line per TLS
 * connection: "channel-binding tls-unique <base64> session <hex id>".
 */

import java.io.File;
import java.io.FileInputStream;
import java.io.InputStream;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.security.KeyFactory;
import java.security.KeyPair;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.KeyPairGenerator;
import java.security.Provider;
import java.security.Security;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.security.cert.TrustAnchor;
import java.security.cert.X509Certificate;
import java.security.spec.ECGenParameterSpec;
import java.security.spec.PKCS8EncodedKeySpec;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Collection;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.logging.Level;
import java.util.logging.Logger;

import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.X509TrustManager;

import org.bouncycastle.asn1.ASN1ObjectIdentifier;
import org.bouncycastle.asn1.pkcs.PrivateKeyInfo;
import org.bouncycastle.asn1.x500.X500Name;
import org.bouncycastle.cert.X509CertificateHolder;
import org.bouncycastle.est.CACertsResponse;
import org.bouncycastle.est.CSRAttributesResponse;
import org.bouncycastle.est.CSRRequestResponse;
import org.bouncycastle.est.ESTAuth;
import org.bouncycastle.est.ESTException;
import org.bouncycastle.est.ESTService;
import org.bouncycastle.est.EnrollmentResponse;
import org.bouncycastle.est.HttpAuth;
import org.bouncycastle.est.jcajce.ChannelBindingProvider;
import org.bouncycastle.est.jcajce.JcaHttpAuthBuilder;
import org.bouncycastle.est.jcajce.JcaJceUtils;
import org.bouncycastle.est.jcajce.JsseESTServiceBuilder;
import org.bouncycastle.jce.provider.BouncyCastleProvider;
import org.bouncycastle.jsse.BCSSLConnection;
import org.bouncycastle.jsse.BCSSLSocket;
import org.bouncycastle.jsse.provider.BouncyCastleJsseProvider;
import org.bouncycastle.operator.ContentSigner;
import org.bouncycastle.operator.jcajce.JcaContentSignerBuilder;
import org.bouncycastle.pkcs.PKCS10CertificationRequest;
import org.bouncycastle.pkcs.PKCS10CertificationRequestBuilder;
import org.bouncycastle.pkcs.jcajce.JcaPKCS10CertificationRequestBuilder;
import org.bouncycastle.util.encoders.Hex;

public final class EstHarness
{
    /** Socket read timeout: a hung server fails the run instead of hanging it. */
    private static final int TIMEOUT_MILLIS = 15000;

    /** Held so the level sticks: BCJSSE logs its security properties at INFO and WARNING. */
    private static final Logger BC_LOG = Logger.getLogger("org.bouncycastle");

    private final Map<String, String> opts;
    private final File out;

    private EstHarness(Map<String, String> opts)
    {
        this.opts = opts;
        this.out = new File(need("out"));
    }

    public static void main(String[] args) throws Exception
    {
        if (args.length < 1 || args.length % 2 != 1)
        {
            System.err.println("usage: EstHarness OP --name value ...");
            System.exit(64);
        }
        Map<String, String> opts = new HashMap<String, String>();
        for (int i = 1; i < args.length; i += 2)
        {
            if (!args[i].startsWith("--"))
            {
                System.err.println("bad option " + args[i]);
                System.exit(64);
            }
            opts.put(args[i].substring(2), args[i + 1]);
        }
        BC_LOG.setLevel(Level.SEVERE);
        Security.addProvider(new BouncyCastleProvider());
        EstHarness h = new EstHarness(opts);
        String op = args[0];
        try
        {
            if (op.equals("cacerts"))
            {
                h.cacerts();
            }
            else if (op.equals("enroll"))
            {
                h.enroll();
            }
            else if (op.equals("reenroll"))
            {
                h.reenroll();
            }
            else if (op.equals("enroll-pop"))
            {
                h.enrollPop();
            }
            else if (op.equals("serverkeygen"))
            {
                h.serverkeygen();
            }
            else if (op.equals("csrattrs"))
            {
                h.csrattrs();
            }
            else
            {
                System.err.println("unknown operation " + op);
                System.exit(64);
            }
        }
        catch (ESTException e)
        {
            // The HTTP status and the server's reason tell the test why.
            System.out.println("error status=" + e.getStatusCode() + " body=" + body(e) + " " + e);
            e.printStackTrace();
            System.exit(2);
        }
        catch (Exception e)
        {
            System.out.println("error status=-1 " + e);
            e.printStackTrace();
            System.exit(2);
        }
    }

    /** The first line of an error response's text, if any (bounded). */
    private static String body(ESTException e)
    {
        try
        {
            InputStream in = e.getBody();
            if (in == null)
            {
                return "";
            }
            byte[] buf = new byte[512];
            int n = in.read(buf);
            return n <= 0 ? "" : new String(buf, 0, n, StandardCharsets.UTF_8).split("\n")[0].trim();
        }
        catch (Exception ignored)
        {
            return "";
        }
    }

    private String need(String name)
    {
        String v = opts.get(name);
        if (v == null)
        {
            throw new IllegalArgumentException("missing --" + name);
        }
        return v;
    }

    // -- setup --------------------------------------------------------------

    /** An explicit trust anchor database (RFC 7030 3.6.1) from a PEM file. */
    private X509TrustManager[] trustManagers() throws Exception
    {
        CertificateFactory cf = CertificateFactory.getInstance("X.509");
        Set<TrustAnchor> anchors = new HashSet<TrustAnchor>();
        InputStream in = new FileInputStream(need("trust"));
        try
        {
            for (Certificate c : cf.generateCertificates(in))
            {
                anchors.add(new TrustAnchor((X509Certificate)c, null));
            }
        }
        finally
        {
            in.close();
        }
        return JcaJceUtils.getCertPathTrustManager(anchors, null);
    }

    /**
     * The EST service. With --jsse bc the TLS stack is BCJSSE and a
     * ChannelBindingProvider reads tls-unique from the BCSSLSocket; the
     * JDK's SunJSSE offers no channel bindings.
     */
    private ESTService service() throws Exception
    {
        JsseESTServiceBuilder b = new JsseESTServiceBuilder(need("server"), trustManagers());
        b.withTimeout(TIMEOUT_MILLIS);
        String tls = opts.get("tls");
        if (tls != null)
        {
            b.withTLSVersion(tls);
        }
        String clientDir = opts.get("client-dir");
        if (clientDir != null)
        {
            // TLS client authentication with an earlier enrollment's
            // cert.pem and key.pem (simplereenroll, RFC 7030 4.2.2).
            X509Certificate cert = (X509Certificate)CertificateFactory.getInstance("X.509")
                .generateCertificates(new FileInputStream(new File(clientDir, "cert.pem"))).iterator().next();
            String pem = new String(Files.readAllBytes(new File(clientDir, "key.pem").toPath()),
                StandardCharsets.US_ASCII);
            byte[] der = Base64.getMimeDecoder().decode(
                pem.replaceAll("-----[A-Z ]+-----", ""));
            PrivateKey key = KeyFactory.getInstance("EC").generatePrivate(new PKCS8EncodedKeySpec(der));
            KeyStore ks = KeyStore.getInstance("PKCS12");
            ks.load(null, null);
            char[] pass = "harness".toCharArray();
            ks.setKeyEntry("client", key, pass, new Certificate[]{cert});
            KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
            kmf.init(ks, pass);
            b.withKeyManagers(kmf.getKeyManagers());
        }
        if ("bc".equals(opts.get("jsse")))
        {
            Provider jsse = new BouncyCastleJsseProvider();
            b.withProvider(jsse);
            b.withChannelBindingProvider(new ChannelBindingProvider()
            {
                public boolean canAccessChannelBinding(Socket sock)
                {
                    return sock instanceof BCSSLSocket;
                }

                public byte[] getChannelBinding(Socket sock, String binding)
                {
                    BCSSLConnection conn = ((BCSSLSocket)sock).getConnection();
                    byte[] value = conn == null ? null : conn.getChannelBinding(binding);
                    if (value != null)
                    {
                        // Recorded for the test: one line per TLS connection, with
                        // the session id, which repeats when a session is resumed.
                        System.err.println("channel-binding " + binding + " "
                            + Base64.getEncoder().encodeToString(value) + " session "
                            + Hex.toHexString(((SSLSocket)sock).getSession().getId()));
                    }
                    return value;
                }
            });
        }
        return b.build();
    }

    private ESTAuth auth() throws Exception
    {
        String user = opts.get("user");
        if (user == null)
        {
            return null;
        }
        if ("plain".equals(opts.get("auth-kind")))
        {
            // The constructor BC's documentation shows for Basic: it has no
            // digest calculators, so it can answer Basic only.
            return new HttpAuth(user, need("password").toCharArray());
        }
        // The builder supplies a nonce generator and digest calculators, so
        // the same object answers a Basic or a Digest challenge.
        return new JcaHttpAuthBuilder(user, need("password").toCharArray()).build();
    }

    private static KeyPair newKey() throws Exception
    {
        KeyPairGenerator g = KeyPairGenerator.getInstance("EC");
        g.initialize(new ECGenParameterSpec("secp256r1"));
        return g.generateKeyPair();
    }

    private PKCS10CertificationRequestBuilder csrBuilder(KeyPair kp)
    {
        return new JcaPKCS10CertificationRequestBuilder(
            new X500Name(opts.getOrDefault("subject", "CN=bc-device")), kp.getPublic());
    }

    private static ContentSigner signer(KeyPair kp) throws Exception
    {
        return new JcaContentSignerBuilder("SHA256withECDSA").build(kp.getPrivate());
    }

    // -- output ---------------------------------------------------------------

    private void writePem(String name, List<String> types, List<byte[]> ders) throws Exception
    {
        StringBuilder sb = new StringBuilder();
        Base64.Encoder enc = Base64.getMimeEncoder(64, new byte[]{'\n'});
        for (int i = 0; i < ders.size(); i++)
        {
            sb.append("-----BEGIN ").append(types.get(i)).append("-----\n");
            sb.append(enc.encodeToString(ders.get(i))).append('\n');
            sb.append("-----END ").append(types.get(i)).append("-----\n");
        }
        Files.write(new File(out, name).toPath(), sb.toString().getBytes(StandardCharsets.US_ASCII));
    }

    private void writePem(String name, String type, byte[] der) throws Exception
    {
        List<String> types = new ArrayList<String>();
        List<byte[]> ders = new ArrayList<byte[]>();
        types.add(type);
        ders.add(der);
        writePem(name, types, ders);
    }

    private int writeCerts(String name, Collection<X509CertificateHolder> certs) throws Exception
    {
        List<String> types = new ArrayList<String>();
        List<byte[]> ders = new ArrayList<byte[]>();
        for (X509CertificateHolder c : certs)
        {
            types.add("CERTIFICATE");
            ders.add(c.getEncoded());
        }
        writePem(name, types, ders);
        return ders.size();
    }

    /** Writes cert.pem from a completed enrollment; returns the cert count. */
    private int writeEnrolled(EnrollmentResponse r) throws Exception
    {
        if (!r.isCompleted())
        {
            // 202: this harness does not poll (strongSwan's test covers it).
            throw new IllegalStateException("enrollment pending, retry after " + r.getNotBefore());
        }
        return writeCerts("cert.pem", r.getStore().getMatches(null));
    }

    // -- operations -----------------------------------------------------------

    private void cacerts() throws Exception
    {
        CACertsResponse r = service().getCACerts();
        int n = r.hasCertificates() ? writeCerts("cacerts.pem", r.getCertificateStore().getMatches(null)) : 0;
        System.out.println("cacerts ok certs=" + n + " trusted=" + r.isTrusted());
    }

    private void enroll() throws Exception
    {
        KeyPair kp = newKey();
        writePem("pubkey.pem", "PUBLIC KEY", kp.getPublic().getEncoded());
        writePem("key.pem", "PRIVATE KEY", kp.getPrivate().getEncoded());
        PKCS10CertificationRequest csr = csrBuilder(kp).build(signer(kp));
        writePem("csr.pem", "CERTIFICATE REQUEST", csr.getEncoded());
        int n = writeEnrolled(service().simpleEnroll(false, csr, auth()));
        System.out.println("enroll ok certs=" + n);
    }

    private void reenroll() throws Exception
    {
        // A new key (rekey) for the subject of the certificate in --client-dir.
        need("client-dir");
        KeyPair kp = newKey();
        writePem("pubkey.pem", "PUBLIC KEY", kp.getPublic().getEncoded());
        PKCS10CertificationRequest csr = csrBuilder(kp).build(signer(kp));
        writePem("csr.pem", "CERTIFICATE REQUEST", csr.getEncoded());
        int n = writeEnrolled(service().simpleEnroll(true, csr, auth()));
        System.out.println("reenroll ok certs=" + n);
    }

    private void enrollPop() throws Exception
    {
        // The CSR is finished by Bouncy Castle once the TLS connection is up:
        // it adds challengePassword = base64(tls-unique) and signs (3.5).
        KeyPair kp = newKey();
        writePem("pubkey.pem", "PUBLIC KEY", kp.getPublic().getEncoded());
        int n = writeEnrolled(service().simpleEnrollPoP(false, csrBuilder(kp), signer(kp), auth()));
        System.out.println("enroll-pop ok certs=" + n);
    }

    private void serverkeygen() throws Exception
    {
        // The server ignores this key (4.4.1); the CSR only carries the subject.
        KeyPair kp = newKey();
        writePem("pubkey.pem", "PUBLIC KEY", kp.getPublic().getEncoded());
        PKCS10CertificationRequest csr = csrBuilder(kp).build(signer(kp));
        EnrollmentResponse r = service().simpleEnrollWithServersideCreation(csr, auth());
        int n = writeEnrolled(r);
        PrivateKeyInfo key = r.getPrivateKeyInfo();
        if (key == null)
        {
            throw new IllegalStateException("no private key in the serverkeygen response");
        }
        writePem("key.pem", "PRIVATE KEY", key.getEncoded());
        System.out.println("serverkeygen ok certs=" + n + " key=" + key.getPrivateKeyAlgorithm().getAlgorithm());
    }

    private void csrattrs() throws Exception
    {
        CSRRequestResponse r = service().getCSRAttributes();
        if (!r.hasAttributesResponse())
        {
            System.out.println("csrattrs ok none");
            return;
        }
        CSRAttributesResponse attrs = r.getAttributesResponse();
        Files.write(new File(out, "csrattrs.der").toPath(), attrs.getEncoded());
        StringBuilder sb = new StringBuilder("csrattrs ok");
        for (ASN1ObjectIdentifier oid : attrs.getRequirements())
        {
            sb.append(' ').append(oid.getId()).append(attrs.isAttribute(oid) ? "=attribute" : "=oid");
        }
        System.out.println(sb);
    }
}
