package bench.connect;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.Map;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

import org.apache.kafka.common.config.ConfigDef;
import org.apache.kafka.connect.data.Field;
import org.apache.kafka.connect.data.Schema;
import org.apache.kafka.connect.data.SchemaAndValue;
import org.apache.kafka.connect.data.Struct;
import org.apache.kafka.connect.errors.DataException;
import org.apache.kafka.connect.json.JsonConverter;
import org.apache.kafka.connect.storage.Converter;

/**
 * Plain JSON messages to Connect structs of one fixed schema, like Kafka's JsonConverter with
 * {@code schema.content}, except that a JSON object or array in a {@code string} field is kept
 * as its JSON text instead of becoming null. The benchmark's peer uses it to store the
 * free-form {@code payload} object of an AssetEvent in a jsonb column
 * ({@code io.debezium.data.Json}).
 *
 * <p>Configuration: {@code schema.content}, a Connect JSON schema of type struct (the same
 * format JsonConverter takes). One parse per message, no envelope.
 */
public final class PlainJsonConverter implements Converter {

    private final ObjectMapper mapper = new ObjectMapper();
    private final JsonConverter delegate = new JsonConverter();
    private Schema schema;

    @Override
    public void configure(Map<String, ?> configs, boolean isKey) {
        Object content = configs.get("schema.content");
        if (content == null) {
            throw new DataException("PlainJsonConverter needs schema.content");
        }
        Map<String, Object> delegated = new HashMap<>(configs);
        delegated.put("schemas.enable", "false");
        delegated.remove("schema.content");
        delegate.configure(delegated, isKey);
        try {
            schema = delegate.asConnectSchema(mapper.readTree(content.toString()));
        } catch (IOException e) {
            throw new DataException("schema.content is not JSON", e);
        }
        if (schema.type() != Schema.Type.STRUCT) {
            throw new DataException("schema.content must describe a struct");
        }
    }

    @Override
    public ConfigDef config() {
        return new ConfigDef().define("schema.content", ConfigDef.Type.STRING,
                ConfigDef.Importance.HIGH, "Connect JSON schema (a struct) of every message");
    }

    @Override
    public byte[] fromConnectData(String topic, Schema valueSchema, Object value) {
        return delegate.fromConnectData(topic, valueSchema, value);
    }

    @Override
    public SchemaAndValue toConnectData(String topic, byte[] value) {
        if (value == null) {
            return SchemaAndValue.NULL;
        }
        JsonNode node;
        try {
            node = mapper.readTree(value);
        } catch (IOException e) {
            throw new DataException("message is not JSON: "
                    + new String(value, 0, Math.min(value.length, 80), StandardCharsets.UTF_8), e);
        }
        if (!node.isObject()) {
            throw new DataException("message is not a JSON object");
        }
        Struct struct = new Struct(schema);
        for (Field field : schema.fields()) {
            JsonNode v = node.get(field.name());
            if (v == null || v.isNull()) {
                continue; // validate() below rejects a missing required field
            }
            struct.put(field, convert(field, v));
        }
        struct.validate();
        return new SchemaAndValue(schema, struct);
    }

    private static Object convert(Field field, JsonNode v) {
        switch (field.schema().type()) {
            case STRING:
                return v.isTextual() ? v.textValue() : v.toString();
            case INT8:
                return (byte) v.intValue();
            case INT16:
                return (short) v.intValue();
            case INT32:
                return v.intValue();
            case INT64:
                return v.longValue();
            case FLOAT32:
                return v.floatValue();
            case FLOAT64:
                return v.doubleValue();
            case BOOLEAN:
                return v.booleanValue();
            default:
                throw new DataException("unsupported field type " + field.schema().type()
                        + " of " + field.name());
        }
    }
}
