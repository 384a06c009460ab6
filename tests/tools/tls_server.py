"""Certificates made on the spot, and the CouchDB stand-in behind TLS.

``Certificates(directory)`` writes a certificate authority of its own, the
server certificates a test needs (for 127.0.0.1, for another host name,
expired, signed by an authority the client does not know) and a client
certificate, as PEM files, with the ``cryptography`` package.  They carry
the extensions a strict verifier asks for (Python 3.13 sets
``VERIFY_X509_STRICT``): key identifiers, key usage, basic constraints.

``TlsStub(certificates, served="server")`` is ``couch_stub.CouchStub``
answering over TLS with one of them; with ``client_ca`` it asks for a
client certificate signed by that authority.  It counts the connections it
accepted and notes each handshake's outcome, so a test can tell a client
that retries a refused certificate from one that stops.
"""

import datetime
import ipaddress
import ssl
import threading

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from couch_stub import CouchStub, _Handler

LOCAL_IP = "127.0.0.1"


class Certificates:
    """PEM files in ``directory``: ``ca``, ``other_ca``, ``server``, ``wrong_host``,
    ``expired``, ``unknown_ca``, ``client`` (each ``name.pem``; keys ``name.key``),
    and ``client_both.pem`` (the client's certificate and key in one file)."""

    def __init__(self, directory):
        self.directory = directory
        now = datetime.datetime.now(datetime.timezone.utc)
        self._now = now
        self.paths = {}
        ca = self._authority("couchdb_dump test CA")
        other = self._authority("couchdb_dump other CA")
        self._write("ca", *ca)
        self._write("other_ca", *other)
        day = datetime.timedelta(days=1)
        self._leaf("server", ca, dns=["localhost"], ips=[LOCAL_IP])
        self._leaf("wrong_host", ca, dns=["other.example"])
        self._leaf("expired", ca, dns=["localhost"], ips=[LOCAL_IP], start=now - 30 * day, end=now - day)
        self._leaf("unknown_ca", other, dns=["localhost"], ips=[LOCAL_IP])
        self._leaf("client", ca, client=True, common_name="backup-operator")
        both = directory / "client_both.pem"
        both.write_bytes((directory / "client.pem").read_bytes() + (directory / "client.key").read_bytes())
        self.paths["client_both"] = both

    def __getitem__(self, name):
        return str(self.paths[name])

    def key(self, name):
        return str(self.directory / (name + ".key"))

    def _authority(self, common_name):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        identifier = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(self._now - datetime.timedelta(days=1))
                .not_valid_after(self._now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False, key_agreement=False,
                                             key_cert_sign=True, crl_sign=True, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(identifier, critical=False)
                .sign(key, hashes.SHA256()))
        return cert, key

    def _leaf(self, file_name, authority, dns=(), ips=(), start=None, end=None, client=False, common_name=None):
        ca_cert, ca_key = authority
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or (list(dns) + list(ips))[0])])
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start or self._now - datetime.timedelta(days=1))
                   .not_valid_after(end or self._now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False, key_agreement=True,
                                                key_cert_sign=False, crl_sign=False, encipher_only=False,
                                                decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                                  critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        names = [x509.DNSName(name) for name in dns] + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        self._write(file_name, builder.sign(ca_key, hashes.SHA256()), key)

    def _write(self, file_name, cert, key):
        path = self.directory / (file_name + ".pem")
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (self.directory / (file_name + ".key")).write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        self.paths[file_name] = path


class TlsStub(CouchStub):
    """``CouchStub`` over TLS, serving the certificate ``served`` of ``certificates``.

    ``connections`` counts the TCP connections accepted; ``handshakes`` holds,
    for each, None when its handshake succeeded or the server's view of why it
    failed; ``peers`` the subjects of the client certificates shown.
    """

    def __init__(self, certificates, served="server", client_ca=None, **options):
        super().__init__(**options)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificates[served], certificates.key(served))
        if client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(certificates[client_ca])
        self.context = context
        self.connections = 0
        self.handshakes = []
        self.peers = []
        self.url = "https://%s:%d" % (LOCAL_IP, self.port)
        self._counting = threading.Lock()
        accept = self.server.get_request

        def get_request():
            request = accept()
            with self._counting:
                self.connections += 1
            return request
        self.server.get_request = get_request
        self.server.finish_request = self._finish_request

    def _finish_request(self, request, client_address):
        request.settimeout(30)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:
            self.handshakes.append(str(error) or type(error).__name__)
            return
        self.handshakes.append(None)
        peer = tls.getpeercert()
        if peer:
            self.peers.append(dict(item for part in peer["subject"] for item in part))
        try:
            _Handler(tls, client_address, self.server)
        finally:
            try:
                tls.close()
            except OSError:
                pass
