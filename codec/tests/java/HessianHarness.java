import com.caucho.hessian.io.AbstractSerializerFactory;
import com.caucho.hessian.io.BigDecimalDeserializer;
import com.caucho.hessian.io.Deserializer;
import com.caucho.hessian.io.Hessian2Input;
import com.caucho.hessian.io.Hessian2Output;
import com.caucho.hessian.io.Serializer;
import com.caucho.hessian.io.SerializerFactory;
import com.caucho.hessian.io.StringValueSerializer;
import java.io.BufferedReader;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.InputStreamReader;
import java.lang.reflect.Array;
import java.lang.reflect.Field;
import java.lang.reflect.Modifier;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Date;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.SortedMap;
import java.util.SortedSet;

/**
 * Reads hessian2 messages written by the Rust encoder and writes them back, for
 * codec/tests/java_hessian.rs.
 *
 * <p>Each stdin line is {@code name TAB type1,type2,... TAB hex}: one message holding one
 * value per declared type, read as Dubbo's provider reads arguments
 * ({@code Hessian2Input.readObject(Class)} on one stream). Each stdout line is
 * {@code name TAB canonical TAB hex}: a canonical text of what Java built (classes and
 * values, arguments joined by {@code " | "}), and the same objects written again with
 * {@code Hessian2Output.writeObject} on one stream. A failure prints
 * {@code name TAB ERROR ...}.
 */
public class HessianHarness {
    /**
     * Caucho 4.0.38 registers nothing for BigDecimal: it writes one field by field (its
     * compact value is transient, so the number is lost) and reads one the same way.
     * Dubbo's hessian-lite registers StringValueSerializer and BigDecimalDeserializer for
     * it (one field, "value", holding the decimal text); configure Caucho as Dubbo does.
     */
    static SerializerFactory factory() {
        SerializerFactory f = new SerializerFactory();
        f.addFactory(new AbstractSerializerFactory() {
            @Override
            public Serializer getSerializer(@SuppressWarnings("rawtypes") Class cl) {
                return cl == BigDecimal.class ? new StringValueSerializer() : null;
            }

            @Override
            public Deserializer getDeserializer(@SuppressWarnings("rawtypes") Class cl) {
                return cl == BigDecimal.class ? new BigDecimalDeserializer() : null;
            }
        });
        return f;
    }

    public static void main(String[] args) throws Exception {
        SerializerFactory factory = factory();
        BufferedReader in =
                new BufferedReader(new InputStreamReader(System.in, StandardCharsets.US_ASCII));
        StringBuilder out = new StringBuilder();
        String line;
        while ((line = in.readLine()) != null) {
            if (line.isEmpty()) {
                continue;
            }
            String[] parts = line.split("\t", -1);
            String name = parts[0];
            try {
                String[] types = parts[1].split(",");
                Hessian2Input hin = new Hessian2Input(new ByteArrayInputStream(unhex(parts[2])));
                hin.setSerializerFactory(factory);
                List<Object> values = new ArrayList<>();
                StringBuilder canon = new StringBuilder();
                for (String t : types) {
                    Object v = hin.readObject(classOf(t));
                    values.add(v);
                    if (canon.length() > 0) {
                        canon.append(" | ");
                    }
                    canon.append(canon(v));
                }
                if (hin.read() != -1) {
                    throw new IllegalStateException("bytes left after the arguments");
                }
                ByteArrayOutputStream bytes = new ByteArrayOutputStream();
                Hessian2Output hout = new Hessian2Output(bytes);
                hout.setSerializerFactory(factory);
                for (Object v : values) {
                    hout.writeObject(v);
                }
                hout.flush();
                out.append(name).append('\t').append(canon).append('\t')
                        .append(hex(bytes.toByteArray())).append('\n');
            } catch (Throwable e) {
                out.append(name).append("\tERROR ").append(ascii(String.valueOf(e))).append('\n');
            }
        }
        System.out.print(out);
        System.out.flush();
    }

    static Class<?> classOf(String t) throws ClassNotFoundException {
        switch (t) {
            case "int": return int.class;
            case "long": return long.class;
            case "short": return short.class;
            case "byte": return byte.class;
            case "boolean": return boolean.class;
            case "double": return double.class;
            case "float": return float.class;
            case "char": return char.class;
            default:
                if (t.endsWith("[]")) {
                    return Array.newInstance(classOf(t.substring(0, t.length() - 2)), 0).getClass();
                }
                return Class.forName(t);
        }
    }

    /** Class and value, recursively; hash-ordered collections sorted so output is stable. */
    static String canon(Object v) throws IllegalAccessException {
        if (v == null) {
            return "null";
        }
        Class<?> c = v.getClass();
        if (c.isArray()) {
            List<String> items = new ArrayList<>();
            for (int i = 0; i < Array.getLength(v); i++) {
                items.add(canon(Array.get(v, i)));
            }
            return c.getComponentType().getName() + "[]" + items;
        }
        if (v instanceof String) {
            return "String:\"" + ascii((String) v) + "\"";
        }
        if (v instanceof Number || v instanceof Boolean || v instanceof Character) {
            return c.getSimpleName() + ":" + v;
        }
        if (v instanceof Date) {
            return "Date:" + ((Date) v).getTime();
        }
        if (v instanceof Enum) {
            return c.getName() + "." + ((Enum<?>) v).name();
        }
        if (v instanceof Collection) {
            List<String> items = new ArrayList<>();
            for (Object o : (Collection<?>) v) {
                items.add(canon(o));
            }
            if (!(v instanceof List || v instanceof LinkedHashSet || v instanceof SortedSet)) {
                items.sort(null);
            }
            return c.getName() + items;
        }
        if (v instanceof Map) {
            List<String> items = new ArrayList<>();
            for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
                items.add(canon(e.getKey()) + "=" + canon(e.getValue()));
            }
            if (!(v instanceof LinkedHashMap || v instanceof SortedMap)) {
                items.sort(null);
            }
            return c.getName() + "{" + String.join(", ", items) + "}";
        }
        StringBuilder s = new StringBuilder(c.getName()).append('{');
        boolean first = true;
        for (Field f : c.getDeclaredFields()) {
            if (Modifier.isStatic(f.getModifiers())) {
                continue;
            }
            if (!first) {
                s.append(", ");
            }
            first = false;
            Object fv = f.get(v);
            s.append(f.getName()).append('=');
            s.append(f.getType().isPrimitive() ? f.getType().getName() + ":" + fv : canon(fv));
        }
        return s.append('}').toString();
    }

    /** Non-ASCII and control characters as \\uXXXX UTF-16 units. */
    static String ascii(String s) {
        StringBuilder b = new StringBuilder();
        for (char ch : s.toCharArray()) {
            if (ch >= 0x20 && ch < 0x7f && ch != '\\' && ch != '"') {
                b.append(ch);
            } else {
                b.append(String.format("\\u%04x", (int) ch));
            }
        }
        return b.toString();
    }

    static byte[] unhex(String h) {
        byte[] b = new byte[h.length() / 2];
        for (int i = 0; i < b.length; i++) {
            b[i] = (byte) Integer.parseInt(h.substring(2 * i, 2 * i + 2), 16);
        }
        return b;
    }

    static String hex(byte[] b) {
        StringBuilder s = new StringBuilder();
        for (byte x : b) {
            s.append(String.format("%02x", x & 0xff));
        }
        return s.toString();
    }
}
